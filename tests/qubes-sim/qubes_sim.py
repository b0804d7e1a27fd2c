#!/usr/bin/env python3
"""Stand-ins for the Qubes OS tools sdci uses, over a directory tree (a "Qubes world").

Layout of a world rooted at R (contracts §2; built by `sdci_tests::qubes_world`):

    R/                                dom0's `/`
    R/usr/bin/<tool>                  these stand-ins (wrappers that exec this file)
    R/etc/qubes-rpc/, R/usr/local/etc/qubes-rpc/    qrexec services of dom0
    R/etc/qubes/policy.d/*.policy     the qrexec policy (evaluated for real)
    R/home/<dom0 user>/               dom0's home
    R/var/lib/qubes-sim/qubes.json    the qubes: class, state, tags, sizes; world settings
    R/var/lib/qubes-sim/<qube>/       each other qube's `/` (sd-dev: R/var/lib/qubes-sim/sd-dev)
    R/var/log/qubes-sim/calls.jsonl   every stand-in invocation, one JSON object a line
    R/var/log/qubes-sim/journal.log   dom0's "journal": qrexec service stderr, policy decisions

How a tool finds R: `SDCI_QUBES_DOM0_ROOT` if set, else `SDCI_GUEST_ROOT` (the vSphere
simulator sets it for every dom0 process). A process "in" a qube (started by qvm-run) gets
`SDCI_GUEST_ROOT=R` (the VMware guest's root), `SDCI_QUBES_DOM0_ROOT=R`, `SDCI_QUBE=<name>` and
`SDCI_QUBE_ROOT=<that qube's root>`. Without `SDCI_QUBE` a caller is dom0.

Each tool implements the documented behaviour listed in tests/README.md and refuses what it
does not implement with exit 2 and a message naming the stand-in, never silently.

Invoked as `qubes_sim.py TOOL ARGS...` (the wrappers in R/usr/bin do that).
"""

import fcntl
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import threading

QREXEC_EXIT_REQUEST_REFUSED = 126
QREXEC_EXIT_PROBLEM = 125
QREXEC_EXIT_SERVICE_NOT_FOUND = 127
# 4.2 default QREXEC_SERVICE_PATH, in lookup order.
SERVICE_DIRS = ("/usr/local/etc/qubes-rpc", "/etc/qubes-rpc")
NAME_MAX = 255
MAX_SERVICE_NAME_LEN = 65000
RPCNAME_ALLOWED = set(string.ascii_letters + string.digits + "+-._")
POLICY_FILENAME_ALLOWED = set(string.digits + string.ascii_lowercase + "_.-")
CHUNK = 65536


class SimError(Exception):
    """A usage or world error: printed as `TOOL: error: MESSAGE`, exit `code`."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# The world: paths, qube state (locked JSON), the call log and the journal.
# ---------------------------------------------------------------------------------------------


class World:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.sim_dir = os.path.join(self.root, "var/lib/qubes-sim")
        self.state_path = os.path.join(self.sim_dir, "qubes.json")
        self.log_dir = os.path.join(self.root, "var/log/qubes-sim")
        if not os.path.isfile(self.state_path):
            raise SimError(
                f"{self.state_path} is missing: {self.root} is not a Qubes world "
                "(build one with sdci_tests::qubes_world)"
            )

    @staticmethod
    def from_env():
        root = os.environ.get("SDCI_QUBES_DOM0_ROOT") or os.environ.get("SDCI_GUEST_ROOT")
        if not root:
            raise SimError(
                "neither SDCI_QUBES_DOM0_ROOT nor SDCI_GUEST_ROOT is set: "
                "the Qubes stand-ins only run inside a simulated world"
            )
        return World(root)

    # -- state ----------------------------------------------------------------------------------

    def _locked(self):
        lock = open(os.path.join(self.sim_dir, "qubes.lock"), "a+")
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock

    def read(self):
        with self._locked():
            with open(self.state_path, encoding="utf-8") as f:
                return json.load(f)

    def update(self, change):
        """Read-modify-write the state under an exclusive lock; returns change's result."""
        with self._locked():
            with open(self.state_path, encoding="utf-8") as f:
                state = json.load(f)
            result = change(state)
            tmp = self.state_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.state_path)
            return result

    def qube(self, state, name):
        qubes = state["qubes"]
        if name not in qubes:
            raise SimError(f"no such domain: '{name}'")
        return qubes[name]

    # -- paths ----------------------------------------------------------------------------------

    def qube_root(self, name):
        return self.root if name == "dom0" else os.path.join(self.sim_dir, name)

    def qube_home(self, state, name):
        if name == "dom0":
            return os.path.join(self.root, "home", state["dom0_user"])
        return os.path.join(self.qube_root(name), "home/user")

    def qube_env(self, state, name, base=None):
        """The environment of a process started in qube `name` (login-like: HOME, USER, PATH)."""
        root = self.qube_root(name)
        env = {} if base is None else dict(base)
        user = state["dom0_user"] if name == "dom0" else "user"
        env.update(
            {
                "HOME": self.qube_home(state, name),
                "USER": user,
                "LOGNAME": user,
                "PATH": ":".join(
                    [os.path.join(root, "usr/local/bin"), os.path.join(root, "usr/bin"),
                     state["base_path"]]
                ),
                "SDCI_GUEST_ROOT": self.root,
                "SDCI_QUBES_DOM0_ROOT": self.root,
                "SDCI_QUBE": name,
                "SDCI_QUBE_ROOT": root,
            }
        )
        # Simulation knob (not Qubes behaviour): extra variables for every process of the qube.
        env.update(state["qubes"].get(name, {}).get("env", {}))
        return env

    # -- logs -----------------------------------------------------------------------------------

    def _append(self, name, line):
        os.makedirs(self.log_dir, exist_ok=True)
        fd = os.open(os.path.join(self.log_dir, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)

    def record_call(self, tool, argv):
        caller = os.environ.get("SDCI_QUBE", "dom0")
        self._append("calls.jsonl", json.dumps({"tool": tool, "args": argv, "caller": caller}) + "\n")

    def journal(self, tag, message):
        self._append("journal.log", f"{tag}: {message}\n")


def fail_if_configured(world, state, tool):
    """Fault injection: `tool_exit` in qubes.json maps a tool name to the exit code it returns."""
    code = state.get("tool_exit", {}).get(tool)
    if code:
        sys.stderr.write(f"{tool}: simulated failure (qubes-sim tool_exit)\n")
        sys.exit(int(code))


# ---------------------------------------------------------------------------------------------
# Option parsing shared by the dom0 tools: `--opt`, `--opt=value`, `--opt value`, `-x`, `--`.
# ---------------------------------------------------------------------------------------------


def parse_options(tool, argv, flags, valued, *, stop_at_first_positional=True):
    """Returns (options dict, positionals). `flags`/`valued` map every spelling to a key."""
    opts, rest, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i + 1:])
            break
        if arg.startswith("-") and arg != "-":
            name, eq, value = arg.partition("=")
            if name in flags and not eq:
                opts[flags[name]] = True
            elif name in valued:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise SimError(f"argument {name}: expected one argument")
                    value = argv[i]
                opts.setdefault(valued[name], []).append(value)
            else:
                raise SimError(f"unrecognized argument {arg} (not implemented by the qubes-sim stand-in)")
            i += 1
            continue
        if stop_at_first_positional:
            rest.extend(argv[i:])
            break
        rest.append(arg)
        i += 1
    return opts, rest


# ---------------------------------------------------------------------------------------------
# Processes of qubes: tracked so qvm-shutdown can stop what runs "in" a qube.
# ---------------------------------------------------------------------------------------------


def proc_start_time(pid):
    """The process's start time (clock ticks since boot), or None if it is gone: with the pid it
    identifies a process across pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def descendants(pid):
    """Every descendant of pid (not pid itself), children before grandchildren."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def kill_descendants(pid, start_time):
    """Kills everything a qvm-run started in a qube (the qvm-run itself then reports the death,
    as it would when the qube goes away). Skips a pid that now names another process."""
    if proc_start_time(pid) != start_time:
        return
    for p in reversed(descendants(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_qube(world, name, *, skip_if_running):
    def change(state):
        q = world.qube(state, name)
        if q.get("state") == "running":
            if skip_if_running:
                return None
            return f"domain {name} is already running"
        if q.get("start_fails"):
            return f"Start failed: {q.get('start_error', 'simulated failure (qubes-sim start_fails)')}"
        q["state"] = "running"
        q["start_count"] = q.get("start_count", 0) + 1
        return None

    error = world.update(change)
    if error:
        raise SimError(error, code=1)


def halt_qube(world, name):
    def change(state):
        q = world.qube(state, name)
        pids = q.pop("procs", [])
        q["state"] = "halted"
        return pids

    for pid, start_time in world.update(change):
        kill_descendants(pid, start_time)


# ---------------------------------------------------------------------------------------------
# dom0 tools
# ---------------------------------------------------------------------------------------------


def tool_qvm_run(world, argv):
    """qvm-run [options] VMNAME COMMAND [ARGS...] (qubesadmin/tools/qvm_run.py, one target)."""
    flags = {
        "-p": "pass_io", "--pass-io": "pass_io", "--no-gui": "no_gui", "--nogui": "no_gui",
        "--gui": "gui", "-a": "autostart", "--autostart": "autostart",
        "-n": "no_autostart", "--no-autostart": "no_autostart", "--no-shell": "no_shell",
        "-q": "quiet", "--quiet": "quiet", "-v": "verbose", "--verbose": "verbose",
        "--filter-escape-chars": "filter", "--no-filter-escape-chars": "no_filter",
        "--no-color-output": "no_color", "--no-colour-output": "no_color",
        "--no-color-stderr": "no_color", "--no-colour-stderr": "no_color",
    }
    valued = {"-u": "user", "--user": "user", "--color-output": "color",
              "--colour-output": "color", "--color-stderr": "color", "--colour-stderr": "color"}
    opts, rest = parse_options("qvm-run", argv, flags, valued)
    if len(rest) < 2:
        raise SimError("the following arguments are required: VMNAME, COMMAND")
    name, command, args = rest[0], rest[1], rest[2:]
    state = world.read()
    if name == "dom0":
        raise SimError("qvm-run: running commands in dom0 is not supported (use the command directly)")
    q = world.qube(state, name)
    if q.get("state") != "running":
        if opts.get("no_autostart"):
            raise SimError(f"Qube {name} is not running", code=1)
        start_qube(world, name, skip_if_running=True)
        state = world.read()
    if args or opts.get("no_shell"):
        cmd = [command, *args]  # qubes.VMExec: exec'd directly, looked up in the qube's PATH
    else:
        cmd = ["/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh", "-c", command]
    env = world.qube_env(state, name)
    home = env["HOME"]
    os.makedirs(home, exist_ok=True)
    pass_io = bool(opts.get("pass_io"))
    if "/" not in cmd[0] and shutil.which(cmd[0], path=env["PATH"]) is None:
        if pass_io:
            sys.stderr.write(f"{command}: command not found in {name}\n")
        return 127
    cmd = in_view(world, state, name, cmd, env, home)
    devnull = subprocess.DEVNULL
    # Registered before the command starts, so a qvm-shutdown racing with it still finds it.
    me = [os.getpid(), proc_start_time(os.getpid())]

    def register(state):
        world.qube(state, name).setdefault("procs", []).append(me)

    def unregister(state):
        procs = world.qube(state, name).get("procs", [])
        if me in procs:
            procs.remove(me)

    world.update(register)
    try:
        child = subprocess.Popen(
            cmd, cwd=home, env=env,
            stdin=None if pass_io else devnull,
            stdout=None if pass_io else devnull,
            stderr=None if pass_io else devnull,
        )
    except FileNotFoundError:
        world.update(unregister)
        if pass_io:
            sys.stderr.write(f"{command}: command not found in {name}\n")
        return 127

    def forward(signum, _frame):
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = child.wait()
    world.update(unregister)
    return code if code >= 0 else 128 - code


def tool_qvm_start(world, argv):
    opts, names = parse_options(
        "qvm-start", argv,
        {"--skip-if-running": "skip", "-q": "quiet", "--quiet": "quiet", "-v": "verbose"}, {},
        stop_at_first_positional=False)
    if not names:
        raise SimError("the following arguments are required: VMNAME")
    state = world.read()
    fail_if_configured(world, state, "qvm-start")
    for name in names:
        start_qube(world, name, skip_if_running=bool(opts.get("skip")))
    return 0


def tool_qvm_check(world, argv):
    opts, names = parse_options(
        "qvm-check", argv,
        {"--running": "running", "--paused": "paused", "--template": "template",
         "--networked": "networked", "-q": "quiet", "--quiet": "quiet", "--all": "all"}, {},
        stop_at_first_positional=False)
    for unsupported in ("paused", "networked", "all"):
        if opts.get(unsupported):
            raise SimError(f"--{unsupported} is not implemented by the qubes-sim stand-in")
    if not names:
        raise SimError("the following arguments are required: VMNAME")
    state = world.read()
    missing = [n for n in names if n not in state["qubes"]]
    if missing:
        raise SimError(f"no such domain: '{missing[0]}'")
    qubes = [state["qubes"][n] for n in names]
    if opts.get("running"):
        ok = all(q.get("state") == "running" for q in qubes)
        what = "running" if ok else "not running"
    elif opts.get("template"):
        ok = all(q.get("class") == "TemplateVM" for q in qubes)
        what = "a template" if ok else "not a template"
    else:
        ok, what = True, "exist"
    if not opts.get("quiet"):
        print(f"{', '.join(names)}: {'all ' if len(names) > 1 else ''}{what}")
    return 0 if ok else 1


def tool_qvm_ls(world, argv):
    flags = {"--raw-list": "raw_list", "--running": "running", "--halted": "halted",
             "--paused": "paused", "--raw-data": "raw_data", "--all": "all"}
    valued = {"-O": "fields", "--fields": "fields", "--format": "format"}
    # --tags takes one or more values (up to the next option): collect them before parsing.
    tags, rest_argv, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--tags":
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                tags.append(argv[i])
                i += 1
            if not tags:
                raise SimError("argument --tags: expected at least one argument")
            continue
        if argv[i].startswith("--tags="):
            tags.append(argv[i].split("=", 1)[1])
        else:
            rest_argv.append(argv[i])
        i += 1
    opts, names = parse_options("qvm-ls", rest_argv, flags, valued, stop_at_first_positional=False)
    if opts.get("format"):
        raise SimError("--format is not implemented by the qubes-sim stand-in")
    state = world.read()
    rows = []
    for name in sorted(state["qubes"]):
        q = state["qubes"][name]
        if names and name not in names:
            continue
        if tags and not set(tags) & set(q.get("tags", [])):
            continue
        st = q.get("state", "halted")
        wanted = [s for s in ("running", "halted", "paused") if opts.get(s)]
        if wanted and st not in wanted:
            continue
        rows.append((name, q, st))
    if opts.get("raw_list"):
        for name, _, _ in rows:
            print(name)
        return 0
    fields = [f.strip().lower() for f in ",".join(opts.get("fields", ["name,state,class,label,template,netvm"])).split(",")]

    def value(name, q, st, field):
        if field == "name":
            return name
        if field == "state":
            return st.capitalize()
        if field == "tags":
            return ",".join(q.get("tags", []))
        return str(q.get(field, "-"))

    table = [[value(n, q, s, f) for f in fields] for n, q, s in rows]
    if opts.get("raw_data"):
        for row in table:
            print("|".join(row))
        return 0
    header = [f.upper() for f in fields]
    widths = [max(len(x) for x in col) for col in zip(header, *table)]
    for row in [header, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def tool_qvm_shutdown(world, argv):
    opts, names = parse_options(
        "qvm-shutdown", argv,
        {"--wait": "wait", "--force": "force", "--all": "all", "-q": "quiet", "--quiet": "quiet"},
        {"--timeout": "timeout", "--exclude": "exclude"},
        stop_at_first_positional=False)
    state = world.read()
    fail_if_configured(world, state, "qvm-shutdown")
    if opts.get("all"):
        excluded = set(opts.get("exclude", []))
        names = [n for n in sorted(state["qubes"]) if n != "dom0" and n not in excluded]
    if not names:
        raise SimError("the following arguments are required: VMNAME")
    for name in names:
        world.qube(state, name)
        if name == "dom0":
            raise SimError("shutting down dom0 is not supported by the qubes-sim stand-in")
    for name in names:
        halt_qube(world, name)
    return 0


def tool_record_only(tool):
    """Tools whose effect is outside the simulation (updates, Salt, clock): record and succeed."""

    def run(world, argv):
        state = world.read()
        fail_if_configured(world, state, tool)
        if tool == "qubes-dom0-update":
            pkgs = [a for a in argv if not a.startswith("-")]

            def add(state):
                installed = state.setdefault("dom0_packages", [])
                installed.extend(p for p in pkgs if p not in installed)

            world.update(add)
            print(f"qubes-sim: {tool}: {' '.join(pkgs) or 'system'} up to date")
        elif tool == "qubes-vm-update":
            targets = []
            for i, a in enumerate(argv):
                if a == "--targets" and i + 1 < len(argv):
                    targets.extend(argv[i + 1].split(","))
                elif a.startswith("--targets="):
                    targets.extend(a.split("=", 1)[1].split(","))
            for t in targets:
                world.qube(state, t)
                print(f"{t}: OK")
        elif tool == "qubesctl":
            print("qubes-sim: qubesctl: recorded, nothing applied")
        return 0

    return run


def tool_sudo(_world, argv):
    """sudo: runs the command as the same user (the simulation has one user)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a in ("-n", "-E", "-H", "-S", "--non-interactive", "--preserve-env") or a.startswith("--preserve-env="):
            i += 1
        elif a in ("-u", "-g", "--user", "--group"):
            i += 2
        elif a.startswith(("--user=", "--group=")):
            i += 1
        else:
            raise SimError(f"option {a} is not implemented by the qubes-sim stand-in")
    cmd = argv[i:]
    if not cmd:
        raise SimError("usage: sudo [-n] [-E] [-u user] command [args]")
    try:
        os.execvp(cmd[0], cmd)
    except FileNotFoundError:
        sys.stderr.write(f"sudo: {cmd[0]}: command not found\n")
        return 1


# ---------------------------------------------------------------------------------------------
# qrexec policy (Qubes 4.2 format, /etc/qubes/policy.d) — parsed with the rules of
# qrexec/policy/parser.py: first matching line wins, no match is a deny.
# ---------------------------------------------------------------------------------------------


class PolicySyntaxError(Exception):
    def __init__(self, path, lineno, message):
        super().__init__(f"{path}:{lineno}: {message}")
        self.path, self.lineno, self.message = path, lineno, message


class AccessDenied(Exception):
    pass


TOKEN_PREFIXES = ("@tag:", "@type:", "@dispvm:@tag:", "@dispvm:")
SOURCE_EXACT = ("@anyvm", "*", "@adminvm")
TARGET_EXACT = ("@anyvm", "*", "@adminvm", "@default", "@dispvm")


def parse_token(token, kind, path, lineno):
    if token == "dom0":
        token = "@adminvm"
    if not token.startswith("@") and token != "*":
        return token
    exact = SOURCE_EXACT if kind == "source" else TARGET_EXACT
    if token in exact:
        return token
    for prefix in TOKEN_PREFIXES:
        if token.startswith(prefix):
            value = token[len(prefix):]
            if not value:
                raise PolicySyntaxError(path, lineno, f"invalid empty {prefix} token: {token!r}")
            if value.startswith("@"):
                continue
            return token
    raise PolicySyntaxError(path, lineno, f"invalid {kind} token: {token!r}")


ACTION_PARAMS = {
    "allow": {"target", "user", "autostart", "notify"},
    "deny": {"notify"},
    "ask": {"target", "default_target", "user", "autostart", "notify"},
}


class Rule:
    def __init__(self, line, path, lineno):
        fields = line.split()
        if len(fields) < 5:
            raise PolicySyntaxError(path, lineno, "wrong number of fields")
        service, argument, source, target, action, *params = fields
        if service != "*":
            bad = sorted(set(c for c in service if c not in RPCNAME_ALLOWED - {"+"}))
            if bad:
                raise PolicySyntaxError(path, lineno, f"service {service!r} contains invalid characters: {bad!r}")
        if argument != "*":
            bad = sorted(set(c for c in argument if c not in RPCNAME_ALLOWED))
            if bad:
                raise PolicySyntaxError(path, lineno, f"argument {argument!r} contains invalid characters: {bad!r}")
            if not argument.startswith("+"):
                raise PolicySyntaxError(path, lineno, f"argument {argument!r} does not start with +")
            if service == "*":
                raise PolicySyntaxError(path, lineno, "only * argument allowed for * service")
        self.service = None if service == "*" else service
        self.argument = None if argument == "*" else argument
        self.source = parse_token(source, "source", path, lineno)
        if self.source == "@default" or self.source == "@dispvm":
            raise PolicySyntaxError(path, lineno, f"invalid source token: {source!r}")
        self.target = parse_token(target, "target", path, lineno)
        if action not in ACTION_PARAMS:
            raise PolicySyntaxError(path, lineno, f"invalid action: {action}")
        self.action = action
        self.params = {}
        for param in params:
            key, eq, value = param.partition("=")
            if not eq:
                raise PolicySyntaxError(path, lineno, f"invalid action parameter syntax: {param!r}")
            if key in self.params:
                raise PolicySyntaxError(path, lineno, f"parameter given twice: {key!r}")
            if key not in ACTION_PARAMS[action]:
                raise PolicySyntaxError(path, lineno, f"invalid parameters for action {action}: {params}")
            self.params[key] = value
        for key in ("target", "default_target"):
            if key in self.params:
                self.params[key] = parse_token(self.params[key], "target", path, lineno)
        if self.target == "@default" and action == "allow" and "target" not in self.params:
            raise PolicySyntaxError(path, lineno, "allow action for @default rule must specify target= option")
        self.path, self.lineno = path, lineno


def token_matches(token, other, qubes):
    """Does a policy token match `other` (a qube name or an @keyword of the request)?"""
    if token == "*":
        return True
    if token == "@anyvm":
        return other != "@adminvm"
    if token.startswith("@tag:"):
        return other in qubes and token[5:] in qubes[other].get("tags", [])
    if token.startswith("@type:"):
        return other in qubes and qubes[other].get("class") == token[6:]
    return token == other


def load_policy(world_root, lint_only_path=None):
    """Parses every policy file (or one file, for lint) into rules. Raises AccessDenied for an
    invalid file name and PolicySyntaxError for the first syntax error, as qrexec does."""
    files = []
    if lint_only_path is not None:
        files = [lint_only_path]
    else:
        policy_dir = os.path.join(world_root, "etc/qubes/policy.d")
        names = sorted(os.listdir(policy_dir)) if os.path.isdir(policy_dir) else []
        for name in names:
            full = os.path.join(policy_dir, name)
            if name.startswith(".") or not name.endswith(".policy") or not os.path.isfile(full):
                continue
            if not set(name) <= POLICY_FILENAME_ALLOWED:
                raise AccessDenied(f"invalid filename: {full}")
            files.append(full)
    rules = []
    for path in files:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("!"):
                    directive = line.split()[0]
                    if directive == "!compat-4.0":
                        continue  # the legacy /etc/qubes-rpc/policy directory is empty here
                    raise PolicySyntaxError(path, lineno, f"directive {directive} is not implemented by the qubes-sim stand-in")
                rules.append(Rule(line, path, lineno))
    return rules


def evaluate_policy(rules, service, argument, source, target, qubes):
    """Returns the resolved target of an allowed call or raises AccessDenied (with a reason)."""
    if target not in ("@adminvm", "@default", "@dispvm") and target not in qubes:
        raise AccessDenied(f"invalid target: {target!r}")
    for rule in rules:
        if rule.service is not None and rule.service != service:
            continue
        if rule.argument is not None and rule.argument != argument:
            continue
        if not token_matches(rule.source, source, qubes):
            continue
        if not token_matches(rule.target, target, qubes):
            continue
        where = f"{rule.path}:{rule.lineno}"
        if rule.action == "deny":
            raise AccessDenied(f"denied by policy {where}")
        if rule.action == "ask":
            raise AccessDenied(f"denied for non-interactive ask ({where}; the stand-in has no GUI)")
        resolved = rule.params.get("target", target)
        if resolved == "@default":
            raise AccessDenied(f"policy define 'allow' action at {where} but no target is specified by caller or policy")
        if resolved == "@dispvm" or resolved.startswith("@dispvm:"):
            raise AccessDenied(f"{where}: DispVM targets are not implemented by the qubes-sim stand-in")
        return resolved
    raise AccessDenied("no matching rule found")


def tool_qubes_policy_lint(_world, argv):
    """qubes-policy-lint FILE...: syntax check of single policy files (path-independent)."""
    files = [a for a in argv if not a.startswith("-")]
    if not files or len(files) != len(argv):
        raise SimError("usage: qubes-policy-lint FILE... (options are not implemented by the stand-in)")
    code = 0
    for path in files:
        try:
            load_policy(None, lint_only_path=path)
        except FileNotFoundError:
            print(f"{path}:0: error: File does not exist.")
            code = 1
        except PolicySyntaxError as e:
            print(f"{path}:{e.lineno}: error: {e.message}")
            code = 1
    return code


# ---------------------------------------------------------------------------------------------
# qrexec-client-vm: a call from a qube to a dom0 service, the way qrexec-daemon, the policy
# daemon and qubes-rpc-multiplexer handle it in Qubes 4.2.
# ---------------------------------------------------------------------------------------------


def sanitize(name, extra):
    allowed = RPCNAME_ALLOWED | set(extra)
    return "".join(c if c in allowed else "_" for c in name)


def find_service(world_root, service, argument):
    """qubes-rpc-multiplexer lookup: for each dir, DIR/NAME+ARG then DIR/NAME; the first that
    exists and is non-empty wins. A call without an argument is looked up as NAME+ first."""
    for directory in SERVICE_DIRS:
        base = os.path.join(world_root, directory.lstrip("/"))
        candidates = []
        full = f"{service}+{argument}"
        if len(full) <= NAME_MAX:
            candidates.append(full)
        candidates.append(service)
        for cand in candidates:
            path = os.path.join(base, cand)
            try:
                if os.path.isfile(path) and os.path.getsize(path) > 0:
                    return path
            except OSError:
                continue
    return None


# ---------------------------------------------------------------------------------------------
# A qube's view of the file system (contracts §6)
# ---------------------------------------------------------------------------------------------

# Run by /bin/sh in the new namespaces: $1 the qube's home tree, $2 its host name, $3 the working
# directory inside the view, $4 (may be empty) a layer to overlay on /usr/local/bin.
VIEW_SCRIPT = (
    'mount --bind "$1" /home || exit 125; '
    'echo "$2" > /proc/sys/kernel/hostname || exit 125; '
    'if [ -n "$4" ]; then mount -t overlay qubes-sim -o "lowerdir=$4:/usr/local/bin" /usr/local/bin || exit 125; fi; '
    'cd "$3" || exit 125; shift 4; exec "$@"'
)


def views_supported():
    """Private mount and UTS namespaces need root and unshare(1)."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None and os.path.isdir("/home")


def view_path(world, name, path):
    """`path` (a real path) as seen inside qube `name`'s view: its home tree is `/home` there."""
    home_tree = os.path.join(world.qube_root(name), "home")
    rel = os.path.relpath(path, home_tree)
    if rel == "." or not rel.startswith(".."):
        return os.path.normpath(os.path.join("/home", rel))
    return path


def in_view(world, state, name, argv, env, cwd, *, usr_local=False):
    """argv to run `argv` in qube `name`'s view (contracts §6): a private mount and UTS namespace
    where the qube's home tree is bound on /home, the host name is the qube's name and `HOME`
    (updated in `env`) is `/home/<user>`; it starts in `cwd` (a real path, mapped into the view).
    With `usr_local`, dom0's R/usr/local/bin is also overlaid on /usr/local/bin, so a service
    file's `exec /usr/local/bin/sdci-dom0` resolves into the world. Without root or unshare(1)
    argv is returned unchanged: HOME stays the real path and absolute paths resolve on the machine."""
    if not views_supported():
        return argv
    user = state["dom0_user"] if name == "dom0" else "user"
    env["HOME"] = f"/home/{user}"
    layer = os.path.join(world.root, "usr/local/bin")
    overlay = layer if usr_local and os.path.isdir(layer) and os.path.isdir("/usr/local/bin") else ""
    home_tree = os.path.join(world.qube_root(name), "home")
    return [shutil.which("unshare"), "--mount", "--uts", "--propagation", "private",
            "/bin/sh", "-c", VIEW_SCRIPT, "sh", home_tree, name, view_path(world, name, cwd), overlay,
            *argv]


def in_qube(argv):
    """`qubes_sim.py in-qube R QUBE PROGRAM [ARGS...]`: not a Qubes tool but the world's own entry
    (dom0's /usr/local/bin/sdci-dom0 wrapper, `QubesWorld::qube_command`): execs PROGRAM in the
    view of QUBE of the world rooted at R, with the caller's environment and working directory."""
    if len(argv) < 3:
        raise SimError("usage: qubes_sim.py in-qube ROOT QUBE PROGRAM [ARGS...]")
    world = World(argv[0])
    state = world.read()
    world.qube(state, argv[1])
    env = dict(os.environ)
    cmd = in_view(world, state, argv[1], argv[2:], env, os.getcwd())
    # Python ignores SIGPIPE; the program gets the default disposition, as after a fork by Popen.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        raise SimError(f"{cmd[0]}: {e.strerror}", 127)


def pump(src_fd, dst_fd):
    """Copies src to dst until EOF, then closes both. If either end fails (the reader went away,
    like a vchan closed early), forwarding stops and both are closed: the writer on the other
    side then gets EPIPE, as a dom0 service does when its caller disappears."""
    try:
        while True:
            data = os.read(src_fd, CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(dst_fd, view):]
    except OSError:
        pass
    finally:
        for fd in (src_fd, dst_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def tool_qrexec_client_vm(world, argv):
    source = os.environ.get("SDCI_QUBE")
    if not source or source == "dom0":
        raise SimError("qrexec-client-vm runs in a qube, not in dom0 (SDCI_QUBE is not set)", QREXEC_EXIT_PROBLEM)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a in ("-t", "-T", "--filter-escape-chars-stdout", "--filter-escape-chars-stderr",
                 "--no-filter-escape-chars-stdout", "--no-filter-escape-chars-stderr") \
                or a.startswith("--buffer-size="):
            i += 1
        elif a == "--":
            i += 1
            break
        else:
            raise SimError(f"option {a} is not implemented by the qubes-sim stand-in", QREXEC_EXIT_PROBLEM)
    if len(argv) - i < 2:
        raise SimError("usage: qrexec-client-vm [options] TARGET SERVICE[+ARG] [LOCAL_PROGRAM [ARGS]]", QREXEC_EXIT_PROBLEM)
    target_raw, descriptor_raw, local = argv[i], argv[i + 1], argv[i + 2:]

    state = world.read()
    qubes = state["qubes"]
    if qubes.get(source, {}).get("state") != "running":
        raise SimError(f"the calling qube {source} is not running", QREXEC_EXIT_PROBLEM)

    # qrexec-client-vm: `$` becomes `@`. qrexec-daemon: sanitise, then validate (4.2).
    target = sanitize(target_raw.replace("$", "@"), "@:")
    descriptor = sanitize(descriptor_raw, "")
    refused = None
    if not descriptor or descriptor.startswith("+") or len(descriptor) > MAX_SERVICE_NAME_LEN:
        refused = f"invalid service name {descriptor!r}"
    service, _, argument = descriptor.partition("+")
    requested = "@adminvm" if target == "dom0" else (target or "@default")
    resolved = None
    if refused is None:
        try:
            rules = load_policy(world.root)
            resolved = evaluate_policy(rules, service, "+" + argument, source, requested, qubes)
        except (AccessDenied, PolicySyntaxError) as e:
            refused = str(e)
    tag = f"qrexec-policy-daemon[{service}+{argument}]"
    if refused is not None:
        world.journal(tag, f"{source} -> {target}: denied: {refused}")
        sys.stderr.write("Request refused\n")
        return QREXEC_EXIT_REQUEST_REFUSED
    if resolved not in ("@adminvm", "dom0"):
        raise SimError(f"policy allowed a call to {resolved}: only calls to dom0 are implemented by the qubes-sim stand-in",
                       QREXEC_EXIT_PROBLEM)
    world.journal(tag, f"{source} -> {target}: allowed to dom0")

    # qubes-rpc-multiplexer in dom0: environment, lookup, exec.
    env = world.qube_env(state, "dom0")
    env.update({
        "QREXEC_REMOTE_DOMAIN": source,
        "QREXEC_SERVICE_FULL_NAME": f"{service}+{argument}",
        "QREXEC_SERVICE_ARGUMENT": argument,
    })
    if target.startswith("@"):
        env["QREXEC_REQUESTED_TARGET_TYPE"] = "keyword"
        env["QREXEC_REQUESTED_TARGET_KEYWORD"] = target[1:]
    else:
        env["QREXEC_REQUESTED_TARGET_TYPE"] = "name"
        env["QREXEC_REQUESTED_TARGET"] = target
    path = find_service(world.root, service, argument)
    if path is None:
        world.journal(f"{service}+{argument}-{source}", "service not found")
        return QREXEC_EXIT_SERVICE_NOT_FOUND

    service_argv = in_view(world, state, "dom0", [path] + ([argument] if argument else []), env,
                           world.root, usr_local=True)
    os.makedirs(world.log_dir, exist_ok=True)
    journal = open(os.path.join(world.log_dir, "journal.log"), "ab")
    # The service's stderr goes to dom0's journal, never to the caller (calls to dom0).
    if local:
        local_proc = None
        try:
            svc = subprocess.Popen(service_argv, cwd=world.root, env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=journal)
        except OSError as e:
            world.journal(f"{service}+{argument}-{source}", f"exec failed: {e}")
            return QREXEC_EXIT_REQUEST_REFUSED
        local_proc = subprocess.Popen(local, stdin=svc.stdout, stdout=svc.stdin)
        svc.stdout.close()
        svc.stdin.close()
        svc.wait()
        return local_proc.wait()

    try:
        svc = subprocess.Popen(service_argv, cwd=world.root, env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=journal, close_fds=True)
    except PermissionError as e:
        # 4.2's multiplexer execs the file unconditionally: a non-executable file fails there.
        world.journal(f"{service}+{argument}-{source}", f"{path}: {e.strerror}")
        return QREXEC_EXIT_REQUEST_REFUSED
    journal.close()
    # The pumps own (and close) their own copies of the pipe ends.
    in_fd, out_fd = os.dup(svc.stdin.fileno()), os.dup(svc.stdout.fileno())
    svc.stdin.close()
    svc.stdout.close()
    svc.stdin = svc.stdout = None
    stdin_copy = threading.Thread(target=pump, args=(os.dup(0), in_fd), daemon=True)
    stdin_copy.start()
    stdout_copy = threading.Thread(target=pump, args=(out_fd, os.dup(1)), daemon=True)
    stdout_copy.start()
    code = svc.wait()
    # The exit code comes back only once the service has exited AND its stdout is closed by
    # every process holding it (a background child keeping stdout open hangs the call, as in
    # Qubes). After the service exits, the caller's remaining input is discarded.
    stdout_copy.join()
    try:
        os.close(1)
    except OSError:
        pass
    if code < 0:
        return 128 - code
    return code


# ---------------------------------------------------------------------------------------------

TOOLS = {
    "qvm-run": tool_qvm_run,
    "qvm-start": tool_qvm_start,
    "qvm-check": tool_qvm_check,
    "qvm-ls": tool_qvm_ls,
    "qvm-shutdown": tool_qvm_shutdown,
    "qvm-sync-clock": tool_record_only("qvm-sync-clock"),
    "qubes-dom0-update": tool_record_only("qubes-dom0-update"),
    "qubes-vm-update": tool_record_only("qubes-vm-update"),
    "qubesctl": tool_record_only("qubesctl"),
    "sudo": tool_sudo,
    "qrexec-client-vm": tool_qrexec_client_vm,
    "qubes-policy-lint": tool_qubes_policy_lint,
}

# Tools that do not need a world (they work on their arguments alone).
WORLDLESS = {"qubes-policy-lint", "sudo"}


def main(argv):
    if len(argv) < 2 or (argv[1] not in TOOLS and argv[1] != "in-qube"):
        sys.stderr.write(f"usage: qubes_sim.py TOOL ARGS... (TOOL: {', '.join(sorted(TOOLS))})\n")
        return 2
    tool, args = argv[1], argv[2:]
    try:
        if tool == "in-qube":
            return in_qube(args)
        try:
            world = World.from_env()
        except SimError:
            if tool not in WORLDLESS:
                raise
            world = None  # qubes-policy-lint and sudo also work outside a world
        if world is not None:
            world.record_call(tool, args)
        return TOOLS[tool](world, args)
    except SimError as e:
        sys.stderr.write(f"{tool}: error: {e}\n")
        return e.code
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main(sys.argv))
