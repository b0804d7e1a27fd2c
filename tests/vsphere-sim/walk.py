#!/usr/bin/env python3
"""The CI walk with VMware's own Python client (pyVmomi, from PyPI) against vsphere-sim.

Run by tests/tests/vsphere_sim.rs (pyvmomi_walk_passes_with_the_official_python_client):
log in, find VMs in every datacenter/folder, revert to the newest update_* snapshot (the guest
directory must be restored), power on, wait for Tools with WaitForUpdatesEx, run a guest
program that exits 3, terminate one (137), the guest-operation faults, upload and download a
file through /guestFile URLs with "*" replaced, shut down, a failed task, snapshot and prune.
Prints "walk ok" and exits 0 on success; any failure raises.
"""

import argparse
import json
import os
import ssl
import sys
import time
import urllib.request
from urllib.parse import urlparse

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl


def wait_props(si, obj, paths, done, timeout=60):
    """A dedicated PropertyCollector + WaitForUpdatesEx until done(props) holds."""
    pc = si.content.propertyCollector.CreatePropertyCollector()
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=paths)],
        )
        pc.CreateFilter(spec, partialUpdates=False)
        props, version = {}, ""
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on {obj} {paths}: {props}")
            update = pc.WaitForUpdatesEx(version, vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=10))
            if update is None:
                continue
            version = update.version
            for fs in update.filterSet:
                for os_ in fs.objectSet:
                    for change in os_.changeSet:
                        props[change.name] = change.val
            if done(props):
                return props
    finally:
        pc.Destroy()


def find_snapshot(tree, pred):
    found = []
    for s in tree:
        if pred(s.name):
            found.append(s)
        found.extend(find_snapshot(s.childSnapshotList, pred))
    return found


def transfer_url(url, host_port):
    u = urlparse(url)
    assert u.hostname == "*" or u.netloc.startswith("*"), url
    return url.replace(u.netloc, host_port, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--guest-user", required=True)
    ap.add_argument("--guest-password", required=True)
    ap.add_argument("--vm", required=True)
    ap.add_argument("--other-vm", required=True)
    ap.add_argument("--guest-root", required=True)
    ap.add_argument("--ca")
    ap.add_argument("--control-url", help="the simulator's control API: also walk injected faults")
    a = ap.parse_args()

    u = urlparse(a.url)
    ctx = None
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=a.ca)
    si = SmartConnect(protocol=u.scheme, host=u.hostname, port=u.port, user=a.user, pwd=a.password,
                      sslContext=ctx, path=u.path)
    try:
        walk(si, a, u, ctx)
    finally:
        Disconnect(si)
    print("walk ok")


def walk(si, a, u, ctx):
    content = si.RetrieveContent()
    print("apiType", content.about.apiType)

    # Every datacenter and folder, not only rootFolder.childEntity[0].vmFolder.
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    vms = {vm.name: vm for vm in view.view}
    view.Destroy()
    assert a.vm in vms and a.other_vm in vms, list(vms)
    vm = vms[a.vm]

    # Revert to the newest update_* snapshot; the guest directory is restored.
    stale = os.path.join(a.guest_root, "home", a.guest_user, "stale.txt")
    with open(stale, "w") as f:
        f.write("left over")
    updates = sorted(find_snapshot(vm.snapshot.rootSnapshotList, lambda n: n.startswith("update_")),
                     key=lambda s: s.name)
    WaitForTask(updates[-1].snapshot.RevertToSnapshot_Task())
    assert not os.path.exists(stale), "revert did not restore the guest directory"

    WaitForTask(vm.PowerOnVM_Task())
    wait_props(si, vm, ["guest.toolsRunningStatus"],
               lambda p: p.get("guest.toolsRunningStatus") == "guestToolsRunning")
    assert vm.guest.guestOperationsReady

    gom = content.guestOperationsManager
    auth = vim.vm.guest.NamePasswordAuthentication(username=a.guest_user, password=a.guest_password)
    pm = gom.processManager

    def run(path, args):
        return pm.StartProgramInGuest(vm, auth, vim.vm.guest.ProcessManager.ProgramSpec(programPath=path, arguments=args))

    def wait_exit(pid):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = pm.ListProcessesInGuest(vm, auth, [pid])
            assert info, f"pid {pid} not listed"
            if info[0].endTime is not None:
                return info[0].exitCode
            time.sleep(0.02)
        raise AssertionError(f"pid {pid} did not end")

    assert wait_exit(run("/bin/sh", "-c 'exit 3'")) == 3
    assert wait_exit(run("/bin/sh", "-c true")) == 0
    sleeper = run("/bin/sh", "-c 'exec sleep 100'")
    pm.TerminateProcessInGuest(vm, auth, sleeper)
    assert wait_exit(sleeper) == 137

    for call, fault in [
        (lambda: pm.TerminateProcessInGuest(vm, auth, 999999999), vim.fault.GuestProcessNotFound),
        (lambda: run("/no/such/program", ""), vim.fault.FileNotFound),
        (lambda: pm.StartProgramInGuest(vm, vim.vm.guest.NamePasswordAuthentication(username="x", password="y"),
                                        vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/sh", arguments="")),
         vim.fault.InvalidGuestLogin),
    ]:
        try:
            call()
        except fault:
            pass
        else:
            raise AssertionError(f"expected {fault.__name__}")

    # Upload and download through /guestFile with "*" replaced by the host we connected to.
    fm = gom.fileManager
    data = ("héllo <guest> & files\n" * 100).encode()
    path = "/home/%s/sd-dev/bin/payload.txt" % a.guest_user
    url = fm.InitiateFileTransferToGuest(vm, auth, path, vim.vm.guest.FileManager.PosixFileAttributes(permissions=0o644),
                                         len(data), True)
    req = urllib.request.Request(transfer_url(url, u.netloc), data=data, method="PUT")
    with urllib.request.urlopen(req, context=ctx) as r:
        assert r.status == 200
    try:
        fm.InitiateFileTransferToGuest(vm, auth, path, vim.vm.guest.FileManager.FileAttributes(), len(data), False)
    except vim.fault.FileAlreadyExists:
        pass
    else:
        raise AssertionError("expected FileAlreadyExists")
    info = fm.InitiateFileTransferFromGuest(vm, auth, path)
    assert info.size == len(data)
    assert isinstance(info.attributes, vim.vm.guest.FileManager.PosixFileAttributes)
    with urllib.request.urlopen(transfer_url(info.url, u.netloc), context=ctx) as r:
        assert r.read() == data

    # Shut down: the call returns at once, the guest powers off later.
    vm.ShutdownGuest()
    wait_props(si, vm, ["runtime.powerState"], lambda p: p.get("runtime.powerState") == "poweredOff")
    try:
        WaitForTask(vm.PowerOffVM_Task())
    except vim.fault.InvalidPowerState:
        pass
    else:
        raise AssertionError("expected a failed PowerOff task (InvalidPowerState)")
    try:
        run("/bin/sh", "")
    except vim.fault.InvalidPowerState:
        pass
    else:
        raise AssertionError("expected InvalidPowerState for a guest operation on an off VM")

    # Snapshot, then keep only the newest update_*.
    WaitForTask(vm.CreateSnapshot_Task(name="update_20990101000000", description="", memory=False, quiesce=False))
    updates = sorted(find_snapshot(vm.snapshot.rootSnapshotList, lambda n: n.startswith("update_")),
                     key=lambda s: s.name)
    for old in updates[:-1]:
        WaitForTask(old.snapshot.RemoveSnapshot_Task(removeChildren=False))
    names = sorted(s.name for s in find_snapshot(vm.snapshot.rootSnapshotList, lambda n: True))
    assert names == ["clean", "update_20990101000000"], names

    if a.control_url:
        injected_faults(si, vm, a.control_url)


def inject(control_url, rule):
    req = urllib.request.Request(control_url + "/faults", data=json.dumps(rule).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200


def injected_faults(si, vm, control_url):
    """Injected faults reach pyVmomi as the typed exceptions ESXi's would."""
    inject(control_url, {"method": "PowerOnVM_Task", "action": "taskerror", "fault": "InsufficientResourcesFault",
                         "count": 1})
    try:
        WaitForTask(vm.PowerOnVM_Task())
    except vim.fault.InsufficientResourcesFault:
        pass
    else:
        raise AssertionError("expected a failed PowerOn task (InsufficientResourcesFault)")
    assert vm.runtime.powerState == "poweredOff"
    inject(control_url, {"method": "PowerOnVM_Task", "action": "taskrunning", "ms": 1000, "count": 1})
    task = vm.PowerOnVM_Task()
    assert task.info.state == "running"
    WaitForTask(task)
    assert vm.runtime.powerState == "poweredOn"
    inject(control_url, {"method": "ShutdownGuest", "action": "soapfault", "fault": "ToolsUnavailable", "count": 1})
    try:
        vm.ShutdownGuest()
    except vim.fault.ToolsUnavailable:
        pass
    else:
        raise AssertionError("expected ToolsUnavailable")
    WaitForTask(vm.PowerOffVM_Task())


if __name__ == "__main__":
    sys.exit(main())
