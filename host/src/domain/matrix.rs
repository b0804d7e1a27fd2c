//! The matrix file of the tested commit, `.github/sdci.yml` (issue 20): which cells (Qubes
//! version × environment × scenario) a commit runs, and on which triggers. Pure: text in,
//! values out; no I/O.
//!
//! The file comes from the commit under test, so it is **hostile input** (a fork's pull request
//! writes it). Invariants:
//! - At most [`MAX_BYTES`] bytes, one document, at most [`MAX_NODES`] nodes nested at most
//!   [`MAX_DEPTH`] deep; anchors, aliases and tags are refused where the parser first meets them
//!   (no alias bomb can expand: nothing is ever expanded).
//! - Unknown keys and duplicate keys are refused, naming the key; every error names its line
//!   ([`MatrixError::line`]).
//! - Every name that reaches dom0 (an environment becomes `SECUREDROP_ENV`, a scenario names a
//!   snapshot and a check run) is `[a-z0-9][a-z0-9._-]{0,31}`; versions are `^\d+\.\d+$`; the
//!   commands a scenario adds are bounded in number and length. They run in dom0 like the
//!   commit's own `Makefile` does (`make dev`), so they add no power the commit lacked.
//!
//! Why `saphyr-parser` (an event parser in pure Rust, the maintained successor of
//! `yaml-rust`/`yaml-rust2`; dependencies: `arraydeque`, `thiserror`) rather than a serde
//! front-end: `serde_yaml` is archived, and its maintained forks (`serde_norway`) translate
//! libyaml from C (`unsafe-libyaml`), expand aliases before serde sees them (bounded only by a
//! repetition limit) and report unknown fields without a line. Reading events lets this module
//! refuse an anchor at its first byte and keep every key's line for its error. Scalars stay the
//! text that was written, so `4.10` is the version `4.10` (YAML 1.2 would read the float 4.1).

use super::pattern::star_match;
use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::fmt;

/// Where the file lives in the tested commit.
pub const MATRIX_PATH: &str = ".github/sdci.yml";
/// The largest file read (the gateway's `file --max-bytes`).
pub const MAX_BYTES: usize = 64 * 1024;
/// Nodes (scalars, sequences, mappings) in one file.
pub const MAX_NODES: usize = 4096;
/// Nesting of sequences and mappings.
pub const MAX_DEPTH: usize = 8;
/// Cells one commit may expand to.
pub const MAX_CELLS: usize = 32;
/// Commands a scenario may add before `make dev`.
pub const MAX_COMMANDS: usize = 16;
/// Characters of one command.
pub const MAX_COMMAND: usize = 4096;
/// The longest timeout a scenario's command may ask for, minutes.
pub const MAX_TIMEOUT_MINUTES: u64 = 6 * 60;
/// The environment when the file names none (SDW's own default).
pub const DEFAULT_ENV: &str = "dev";

/// A file that cannot be used, with the line (1-based) the problem is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{MATRIX_PATH} line {line}: {message}")]
pub struct MatrixError {
    pub line: usize,
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, MatrixError> {
    Err(MatrixError {
        line,
        message: message.into(),
    })
}

/// When the cells run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triggers {
    /// Branch patterns a push runs on (`*` matches any run of characters); empty: never.
    pub push: Vec<String>,
    /// Whether a pull request's `opened`/`synchronize`/`reopened` runs the cells.
    pub pull_request: bool,
    /// Label names that queue the cells on a pull request (besides the host's own labels).
    pub labels: Vec<String>,
    /// Whether the host's nightly schedule runs the cells.
    pub nightly: bool,
}

impl Default for Triggers {
    fn default() -> Self {
        Self {
            push: vec!["*".into()],
            pull_request: true,
            labels: Vec::new(),
            nightly: true,
        }
    }
}

/// A command a scenario runs in dom0 (as `sh -c RUN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The step's name on the job page (`[a-z0-9][a-z0-9._-]{0,31}`).
    pub name: String,
    pub run: String,
    pub timeout_secs: u64,
}

/// A named way of running the tests: from which golden snapshot, with which extra steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    /// The golden snapshot (a key of `[pools.V] scenarios` on the host); `None`: the pool's
    /// own golden snapshot.
    pub snapshot: Option<String>,
    /// The versions and environments it runs on; `None`: all of the file's.
    pub qubes: Option<Vec<String>>,
    pub environments: Option<Vec<String>>,
    /// Run after `make clone`, before `make dev`.
    pub before_dev: Vec<Command>,
    /// Replaces the `make test` stage's command (run as `sh -c`).
    pub test: Option<String>,
    /// Its cells' triggers; `None`: the file's `on`.
    pub on: Option<Triggers>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pub qubes: Vec<String>,
    pub environments: Vec<String>,
    pub scenarios: Vec<Scenario>,
    pub on: Triggers,
    /// One failed cell cancels the commit's other cells (default off: cells are independent).
    pub fail_fast: bool,
}

/// One job's worth of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub version: String,
    pub env: String,
    pub scenario: Option<String>,
    pub snapshot: Option<String>,
    pub before_dev: Vec<Command>,
    pub test: Option<String>,
    pub on: Triggers,
    /// Whether the scenario runs in one environment only (it is then named without it).
    single_env: bool,
}

impl Cell {
    /// The cell's stable name, the last part of its check run / status context: `4.3 / dev`,
    /// `4.3 / upgrade-from-prod` (a scenario in one environment), `4.3 / staging / upgrade`.
    pub fn name(&self) -> String {
        match (&self.scenario, self.single_env) {
            (None, _) => format!("{} / {}", self.version, self.env),
            (Some(s), true) => format!("{} / {s}", self.version),
            (Some(s), false) => format!("{} / {} / {s}", self.version, self.env),
        }
    }

    /// Whether `trigger` runs this cell (the host's own label and comment selectors are
    /// [`Selector`]s, decided by the caller).
    pub fn runs_on(&self, trigger: &Trigger<'_>) -> bool {
        match trigger {
            Trigger::Push { branch } => self.on.push.iter().any(|p| star_match(p, branch)),
            Trigger::PullRequest => self.on.pull_request,
            Trigger::Label { name } => self.on.labels.iter().any(|l| l == name),
            Trigger::Nightly => self.on.nightly,
            Trigger::Manual => true,
        }
    }
}

/// Why a commit is being looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger<'a> {
    Push {
        branch: &'a str,
    },
    PullRequest,
    Label {
        name: &'a str,
    },
    Nightly,
    /// A person asked (`sdci-host run`, a comment command): every selected cell.
    Manual,
}

impl Matrix {
    /// The one-cell matrix of a version (`sdci-host run`, tests): that version × [`DEFAULT_ENV`].
    pub fn plain(version: &str) -> Self {
        Self {
            qubes: vec![version.to_owned()],
            environments: vec![DEFAULT_ENV.into()],
            scenarios: Vec::new(),
            on: Triggers::default(),
            fail_fast: false,
        }
    }

    /// Every cell, in the file's order: each version × environment, then each scenario on its
    /// versions × environments.
    pub fn cells(&self) -> Vec<Cell> {
        let mut out = Vec::new();
        for v in &self.qubes {
            for e in &self.environments {
                out.push(Cell {
                    version: v.clone(),
                    env: e.clone(),
                    scenario: None,
                    snapshot: None,
                    before_dev: Vec::new(),
                    test: None,
                    on: self.on.clone(),
                    single_env: false,
                });
            }
        }
        for s in &self.scenarios {
            let versions = s.qubes.as_ref().unwrap_or(&self.qubes);
            let envs = s.environments.as_ref().unwrap_or(&self.environments);
            for v in versions {
                for e in envs {
                    out.push(Cell {
                        version: v.clone(),
                        env: e.clone(),
                        scenario: Some(s.name.clone()),
                        snapshot: s.snapshot.clone(),
                        before_dev: s.before_dev.clone(),
                        test: s.test.clone(),
                        on: s.on.clone().unwrap_or_else(|| self.on.clone()),
                        single_env: envs.len() == 1,
                    });
                }
            }
        }
        out
    }
}

/// A choice of cells by their parts, from a comment (`/sdci run 4.3 dev`) or a host label
/// (`sdci:4.3`, `sdci:all`). Each word names a version, an environment or a scenario of the
/// matrix (found by which it is); `all` (or no word) selects every cell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub version: Option<String>,
    pub env: Option<String>,
    pub scenario: Option<String>,
}

impl Selector {
    /// Reads `words` against the cells they must name; an unknown word is an error naming it.
    pub fn parse<'a>(
        words: impl IntoIterator<Item = &'a str>,
        cells: &[Cell],
    ) -> Result<Self, String> {
        let mut s = Selector::default();
        for w in words {
            if w == "all" {
                continue;
            }
            let slot = if cells.iter().any(|c| c.version == w) {
                &mut s.version
            } else if cells.iter().any(|c| c.env == w) {
                &mut s.env
            } else if cells.iter().any(|c| c.scenario.as_deref() == Some(w)) {
                &mut s.scenario
            } else {
                let mut known: Vec<String> = Vec::new();
                for c in cells {
                    for part in [Some(&c.version), Some(&c.env), c.scenario.as_ref()]
                        .into_iter()
                        .flatten()
                    {
                        if !known.contains(part) {
                            known.push(part.clone());
                        }
                    }
                }
                return Err(format!(
                    "{:?} is no version, environment or scenario of this commit's matrix \
                     (it has: {})",
                    w.chars().take(40).collect::<String>(),
                    known.join(", ")
                ));
            };
            if slot.as_deref().is_some_and(|old| old != w) {
                return Err(format!("two choices of the same kind: {w:?}"));
            }
            *slot = Some(w.to_owned());
        }
        Ok(s)
    }

    /// Whether `cell` is chosen. Without a scenario word, the scenario cells are chosen too.
    pub fn selects(&self, cell: &Cell) -> bool {
        self.version.as_ref().is_none_or(|v| *v == cell.version)
            && self.env.as_ref().is_none_or(|e| *e == cell.env)
            && self
                .scenario
                .as_ref()
                .is_none_or(|s| cell.scenario.as_ref() == Some(s))
    }

    /// The selector a host label stands for (`<prefix>all`, `<prefix>4.3`, `<prefix>4.3/dev`),
    /// `None` if the label does not start with `prefix` or names nothing of the matrix.
    pub fn from_label(prefix: &str, label: &str, cells: &[Cell]) -> Option<Self> {
        let rest = label.strip_prefix(prefix)?;
        if prefix.is_empty() || rest.is_empty() {
            return None;
        }
        Self::parse(rest.split('/'), cells).ok()
    }
}

// ---- The file's tree: what the YAML events build, with a line on every node. ----

#[derive(Debug)]
enum Node {
    Scalar {
        text: String,
        plain: bool,
        line: usize,
    },
    Seq {
        items: Vec<Node>,
        line: usize,
    },
    Map {
        entries: Vec<(String, usize, Node)>,
        line: usize,
    },
}

impl Node {
    fn line(&self) -> usize {
        match self {
            Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => *line,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { .. } => "a scalar",
            Node::Seq { .. } => "a list",
            Node::Map { .. } => "a mapping",
        }
    }
}

fn line_of(span: &Span) -> usize {
    span.start.line().max(1)
}

/// Builds the tree from the parser's events, refusing what the module doc says.
fn tree(text: &str) -> Result<Option<Node>, MatrixError> {
    enum Open {
        Seq(Vec<Node>, usize),
        Map(Vec<(String, usize, Node)>, Option<(String, usize)>, usize),
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Node> = None;
    let mut nodes = 0usize;
    let mut documents = 0usize;
    let parser = Parser::new_from_str(text);
    for ev in parser {
        let (ev, span) = ev.map_err(|e| MatrixError {
            line: e.marker().line().max(1),
            message: format!("not valid YAML: {}", e.info()),
        })?;
        let line = line_of(&span);
        let node = match ev {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return err(line, "one YAML document only (a second `---` found)");
                }
                continue;
            }
            Event::Alias(_) => return err(line, "aliases (`*name`) are not accepted"),
            Event::Scalar(_, _, anchor, _)
            | Event::SequenceStart(anchor, _)
            | Event::MappingStart(anchor, _)
                if anchor != 0 =>
            {
                return err(line, "anchors (`&name`) are not accepted");
            }
            Event::Scalar(_, _, _, Some(tag))
            | Event::SequenceStart(_, Some(tag))
            | Event::MappingStart(_, Some(tag)) => {
                return err(
                    line,
                    format!("tags (`{}{}`) are not accepted", tag.handle, tag.suffix),
                );
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                nodes += 1;
                if nodes > MAX_NODES {
                    return err(line, format!("more than {MAX_NODES} values"));
                }
                if stack.len() >= MAX_DEPTH {
                    return err(line, format!("nested deeper than {MAX_DEPTH} levels"));
                }
                stack.push(match ev {
                    Event::SequenceStart(..) => Open::Seq(Vec::new(), line),
                    _ => Open::Map(Vec::new(), None, line),
                });
                continue;
            }
            Event::Scalar(text, style, _, None) => {
                nodes += 1;
                if nodes > MAX_NODES {
                    return err(line, format!("more than {MAX_NODES} values"));
                }
                Node::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                    line,
                }
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Open::Seq(items, line)) => Node::Seq { items, line },
                _ => return err(line, "unbalanced list"),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Open::Map(entries, None, line)) => Node::Map { entries, line },
                _ => return err(line, "unbalanced mapping"),
            },
        };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Open::Seq(items, _)) => items.push(node),
            Some(Open::Map(entries, pending, _)) => match pending.take() {
                Some((key, kline)) => entries.push((key, kline, node)),
                None => match node {
                    Node::Scalar { text, line, .. } => {
                        if entries.iter().any(|(k, _, _)| *k == text) {
                            return err(line, format!("key `{}` given twice", shown(&text)));
                        }
                        *pending = Some((text, line));
                    }
                    other => {
                        return err(
                            other.line(),
                            format!("a key must be a plain name, not {}", other.kind()),
                        )
                    }
                },
            },
        }
    }
    Ok(root)
}

/// A name as quoted in an error: at most 40 characters, control characters escaped.
fn shown(s: &str) -> String {
    s.chars().take(40).flat_map(char::escape_default).collect()
}

// ---- The schema, read from the tree. ----

fn scalar<'a>(node: &'a Node, what: &str) -> Result<(&'a str, bool, usize), MatrixError> {
    match node {
        Node::Scalar { text, plain, line } => Ok((text, *plain, *line)),
        other => err(
            other.line(),
            format!("{what} must be a scalar, not {}", other.kind()),
        ),
    }
}

fn boolean(node: &Node, what: &str) -> Result<bool, MatrixError> {
    match scalar(node, what)? {
        ("true", true, _) => Ok(true),
        ("false", true, _) => Ok(false),
        (_, _, line) => err(line, format!("{what} must be true or false")),
    }
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

fn name(node: &Node, what: &str) -> Result<String, MatrixError> {
    let (s, _, line) = scalar(node, what)?;
    if !is_name(s) {
        return err(
            line,
            format!(
                "{what} `{}` must be 1 to 32 of a-z, 0-9, `.`, `_`, `-`, starting with a letter \
                 or digit",
                shown(s)
            ),
        );
    }
    Ok(s.to_owned())
}

fn version(node: &Node) -> Result<String, MatrixError> {
    let (s, _, line) = scalar(node, "a Qubes version")?;
    let ok = s.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.len() + b.len() <= 8
            && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
    });
    if !ok {
        return err(
            line,
            format!("Qubes version `{}`: write e.g. \"4.3\"", shown(s)),
        );
    }
    Ok(s.to_owned())
}

/// A list of items, or one item standing alone; duplicates refused.
fn list<T: PartialEq>(
    node: &Node,
    what: &str,
    max: usize,
    mut item: impl FnMut(&Node) -> Result<T, MatrixError>,
) -> Result<Vec<T>, MatrixError> {
    let items: Vec<&Node> = match node {
        Node::Seq { items, .. } => items.iter().collect(),
        one @ Node::Scalar { .. } => vec![one],
        other => {
            return err(
                other.line(),
                format!("{what} must be a list, not {}", other.kind()),
            )
        }
    };
    if items.len() > max {
        return err(node.line(), format!("{what}: more than {max} entries"));
    }
    let mut out = Vec::with_capacity(items.len());
    for n in items {
        let v = item(n)?;
        if out.contains(&v) {
            return err(n.line(), format!("{what}: an entry is given twice"));
        }
        out.push(v);
    }
    Ok(out)
}

/// The entries of a mapping, each key checked against `known` (an unknown key is refused with
/// its name, its line and the keys that exist).
fn mapping<'a>(
    node: &'a Node,
    what: &str,
    known: &[&str],
) -> Result<&'a [(String, usize, Node)], MatrixError> {
    let Node::Map { entries, .. } = node else {
        return err(
            node.line(),
            format!("{what} must be a mapping, not {}", node.kind()),
        );
    };
    for (k, line, _) in entries {
        if !known.contains(&k.as_str()) {
            return err(
                *line,
                format!(
                    "unknown key `{}` in {what} (known: {})",
                    shown(k),
                    known.join(", ")
                ),
            );
        }
    }
    Ok(entries)
}

fn triggers(node: &Node, what: &str) -> Result<Triggers, MatrixError> {
    let mut t = Triggers::default();
    for (k, _, v) in mapping(node, what, &["push", "pull_request", "labels", "nightly"])? {
        match k.as_str() {
            "push" => {
                t.push = match v {
                    Node::Scalar {
                        text, plain: true, ..
                    } if text == "false" => Vec::new(),
                    Node::Scalar {
                        text, plain: true, ..
                    } if text == "true" => vec!["*".into()],
                    _ => list(v, "push", 32, |n| {
                        let (s, _, line) = scalar(n, "a branch pattern")?;
                        if s.is_empty() || s.len() > 100 || s.chars().any(char::is_control) {
                            return err(line, "a branch pattern must be 1 to 100 characters");
                        }
                        Ok(s.to_owned())
                    })?,
                }
            }
            "pull_request" => t.pull_request = boolean(v, "pull_request")?,
            "labels" => {
                t.labels = list(v, "labels", 16, |n| {
                    let (s, _, line) = scalar(n, "a label")?;
                    if s.is_empty() || s.chars().count() > 50 || s.chars().any(char::is_control) {
                        return err(line, "a label must be 1 to 50 characters");
                    }
                    Ok(s.to_owned())
                })?
            }
            _ => t.nightly = boolean(v, "nightly")?,
        }
    }
    Ok(t)
}

fn command(node: &Node, n: usize) -> Result<Command, MatrixError> {
    let check_run = |s: &str, line: usize| {
        if s.trim().is_empty() || s.chars().count() > MAX_COMMAND || s.contains('\0') {
            return err(
                line,
                format!("a command must be 1 to {MAX_COMMAND} characters"),
            );
        }
        Ok(s.to_owned())
    };
    match node {
        Node::Scalar { text, line, .. } => Ok(Command {
            name: format!("before-dev-{n}"),
            run: check_run(text, *line)?,
            timeout_secs: 60 * 60,
        }),
        _ => {
            let mut c = Command {
                name: format!("before-dev-{n}"),
                run: String::new(),
                timeout_secs: 60 * 60,
            };
            let mut has_run = false;
            for (k, _, v) in mapping(node, "a command", &["name", "run", "timeout_minutes"])? {
                match k.as_str() {
                    "name" => c.name = name(v, "a step name")?,
                    "run" => {
                        let (s, _, line) = scalar(v, "run")?;
                        c.run = check_run(s, line)?;
                        has_run = true;
                    }
                    _ => {
                        let (s, _, line) = scalar(v, "timeout_minutes")?;
                        match s.parse::<u64>() {
                            Ok(m) if (1..=MAX_TIMEOUT_MINUTES).contains(&m) => {
                                c.timeout_secs = m * 60
                            }
                            _ => {
                                return err(
                                    line,
                                    format!("timeout_minutes must be 1 to {MAX_TIMEOUT_MINUTES}"),
                                )
                            }
                        }
                    }
                }
            }
            if !has_run {
                return err(node.line(), "a command needs `run`");
            }
            Ok(c)
        }
    }
}

fn scenario(key: &str, kline: usize, node: &Node) -> Result<Scenario, MatrixError> {
    let s_name = name(
        &Node::Scalar {
            text: key.to_owned(),
            plain: true,
            line: kline,
        },
        "a scenario name",
    )?;
    let mut s = Scenario {
        name: s_name,
        snapshot: None,
        qubes: None,
        environments: None,
        before_dev: Vec::new(),
        test: None,
        on: None,
    };
    // `name: {}` and `name:` (null) both mean "all defaults".
    if let Node::Scalar { text, plain, .. } = node {
        if *plain && (text.is_empty() || text == "~" || text == "null") {
            return Ok(s);
        }
    }
    let what = format!("scenario `{}`", s.name);
    let known = [
        "snapshot",
        "qubes",
        "environments",
        "before_dev",
        "test",
        "on",
    ];
    for (k, _, v) in mapping(node, &what, &known)? {
        match k.as_str() {
            "snapshot" => s.snapshot = Some(name(v, "a snapshot")?),
            "qubes" => s.qubes = Some(list(v, "qubes", 8, version)?),
            "environments" => {
                s.environments = Some(list(v, "environments", 8, |n| name(n, "an environment"))?)
            }
            "before_dev" => {
                let mut i = 0;
                s.before_dev = list(v, "before_dev", MAX_COMMANDS, |n| {
                    i += 1;
                    command(n, i)
                })?;
                let mut names: Vec<&str> = Vec::new();
                for c in &s.before_dev {
                    if names.contains(&c.name.as_str()) {
                        return err(v.line(), format!("step name `{}` given twice", c.name));
                    }
                    names.push(&c.name);
                }
            }
            "test" => {
                let (t, _, line) = scalar(v, "test")?;
                if t.trim().is_empty() || t.chars().count() > MAX_COMMAND || t.contains('\0') {
                    return err(line, format!("test must be 1 to {MAX_COMMAND} characters"));
                }
                s.test = Some(t.to_owned());
            }
            _ => s.on = Some(triggers(v, &format!("{what}'s on"))?),
        }
    }
    Ok(s)
}

/// Parses the file. Errors name the line; see the module doc for what is refused.
pub fn parse(bytes: &[u8]) -> Result<Matrix, MatrixError> {
    if bytes.len() > MAX_BYTES {
        return err(
            1,
            format!(
                "the file has {} bytes; at most {MAX_BYTES} are read",
                bytes.len()
            ),
        );
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        MatrixError {
            line,
            message: "not UTF-8".into(),
        }
    })?;
    let Some(root) = tree(text)? else {
        return err(1, "the file is empty: it needs at least `qubes:`");
    };
    let known = ["qubes", "environments", "scenarios", "on", "fail_fast"];
    let entries = mapping(&root, "the file", &known)?;
    let mut m = Matrix {
        qubes: Vec::new(),
        environments: vec![DEFAULT_ENV.into()],
        scenarios: Vec::new(),
        on: Triggers::default(),
        fail_fast: false,
    };
    let mut has_qubes = false;
    for (k, _, v) in entries {
        match k.as_str() {
            "qubes" => {
                m.qubes = list(v, "qubes", 8, version)?;
                has_qubes = true;
            }
            "environments" => {
                m.environments = list(v, "environments", 8, |n| name(n, "an environment"))?
            }
            "scenarios" => {
                let Node::Map { entries, .. } = v else {
                    return err(
                        v.line(),
                        format!("scenarios must be a mapping, not {}", v.kind()),
                    );
                };
                for (sk, sline, sv) in entries {
                    m.scenarios.push(scenario(sk, *sline, sv)?);
                }
            }
            "on" => m.on = triggers(v, "on")?,
            _ => m.fail_fast = boolean(v, "fail_fast")?,
        }
    }
    if !has_qubes || m.qubes.is_empty() {
        return err(root.line(), "`qubes:` must name at least one Qubes version");
    }
    if m.environments.is_empty() {
        return err(root.line(), "`environments:` must name at least one");
    }
    for (s, (_, sline, _)) in m.scenarios.iter().zip(scenario_lines(&root)) {
        for v in s.qubes.iter().flatten() {
            if !m.qubes.contains(v) {
                return err(
                    sline,
                    format!(
                        "scenario `{}` names Qubes {v}, which `qubes:` does not list",
                        s.name
                    ),
                );
            }
        }
        if s.environments.as_ref().is_some_and(Vec::is_empty)
            || s.qubes.as_ref().is_some_and(Vec::is_empty)
        {
            return err(sline, format!("scenario `{}` runs nowhere", s.name));
        }
    }
    let cells = m.cells().len();
    if cells > MAX_CELLS {
        return err(
            root.line(),
            format!("the matrix has {cells} cells; at most {MAX_CELLS}"),
        );
    }
    Ok(m)
}

fn scenario_lines(root: &Node) -> Vec<(String, usize, ())> {
    let Node::Map { entries, .. } = root else {
        return Vec::new();
    };
    entries
        .iter()
        .filter(|(k, _, _)| k == "scenarios")
        .flat_map(|(_, _, v)| match v {
            Node::Map { entries, .. } => entries
                .iter()
                .map(|(k, l, _)| (k.clone(), *l, ()))
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SDW's likely matrix, as the README shows it.
    const SDW: &str = "\
qubes: [\"4.3\"]
environments: [dev, staging]
scenarios:
  upgrade-from-prod:
    snapshot: prod-installed
    environments: [staging]
    before_dev:
      - name: install-prod
        run: make prod
        timeout_minutes: 90
    test: make test-upgrade
    on:
      push: [main]
      pull_request: false
      labels: [4.3-openqa-pending]
on:
  push: [main, \"release/*\"]
  pull_request: true
fail_fast: false
";

    fn names(m: &Matrix) -> Vec<String> {
        m.cells().iter().map(Cell::name).collect()
    }

    #[test]
    fn sdws_matrix_expands_to_one_cell_per_version_environment_and_scenario() {
        let m = parse(SDW.as_bytes()).unwrap();
        assert_eq!(
            names(&m),
            ["4.3 / dev", "4.3 / staging", "4.3 / upgrade-from-prod"]
        );
        let up = &m.cells()[2];
        assert_eq!(up.env, "staging");
        assert_eq!(up.snapshot.as_deref(), Some("prod-installed"));
        assert_eq!(up.before_dev[0].name, "install-prod");
        assert_eq!(up.before_dev[0].timeout_secs, 90 * 60);
        assert_eq!(up.test.as_deref(), Some("make test-upgrade"));
        assert!(!m.fail_fast);
    }

    #[test]
    fn two_versions_by_two_environments_are_four_cells() {
        let m = parse(b"qubes: [\"4.2\", \"4.3\"]\nenvironments: [dev, staging]\n").unwrap();
        assert_eq!(
            names(&m),
            ["4.2 / dev", "4.2 / staging", "4.3 / dev", "4.3 / staging"]
        );
    }

    #[test]
    fn a_scenario_in_several_environments_names_each() {
        let m =
            parse(b"qubes: 4.3\nenvironments: [dev, prod]\nscenarios:\n  nightly-rpm:\n").unwrap();
        assert_eq!(
            names(&m)[2..],
            ["4.3 / dev / nightly-rpm", "4.3 / prod / nightly-rpm"]
        );
    }

    #[test]
    fn versions_stay_the_text_written() {
        let m = parse(b"qubes: [4.10, '4.3']\n").unwrap();
        assert_eq!(m.qubes, ["4.10", "4.3"]);
        assert_eq!(m.environments, [DEFAULT_ENV]);
        for bad in [
            "qubes: [four]\n",
            "qubes: \"4\"\n",
            "qubes: []\n",
            "fail_fast: true\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn triggers_decide_per_cell() {
        let m = parse(SDW.as_bytes()).unwrap();
        let cells = m.cells();
        let (dev, up) = (&cells[0], &cells[2]);
        assert!(dev.runs_on(&Trigger::Push { branch: "main" }));
        assert!(dev.runs_on(&Trigger::Push {
            branch: "release/1.0"
        }));
        assert!(!dev.runs_on(&Trigger::Push { branch: "feature" }));
        assert!(dev.runs_on(&Trigger::PullRequest));
        assert!(!up.runs_on(&Trigger::PullRequest));
        assert!(up.runs_on(&Trigger::Label {
            name: "4.3-openqa-pending"
        }));
        assert!(!dev.runs_on(&Trigger::Label {
            name: "4.3-openqa-pending"
        }));
        assert!(dev.runs_on(&Trigger::Nightly) && up.runs_on(&Trigger::Nightly));
        assert!(up.runs_on(&Trigger::Manual));
        let never = parse(b"qubes: 4.3\non:\n  push: false\n  nightly: false\n").unwrap();
        let c = &never.cells()[0];
        assert!(!c.runs_on(&Trigger::Push { branch: "main" }) && !c.runs_on(&Trigger::Nightly));
    }

    #[test]
    fn selectors_choose_cells_by_their_parts() {
        let cells = parse(SDW.as_bytes()).unwrap().cells();
        let chosen = |words: &[&str]| -> Vec<String> {
            let s = Selector::parse(words.iter().copied(), &cells).unwrap();
            cells
                .iter()
                .filter(|c| s.selects(c))
                .map(Cell::name)
                .collect()
        };
        assert_eq!(chosen(&[]).len(), 3);
        assert_eq!(chosen(&["all"]).len(), 3);
        assert_eq!(chosen(&["4.3", "dev"]), ["4.3 / dev"]);
        assert_eq!(
            chosen(&["staging"]),
            ["4.3 / staging", "4.3 / upgrade-from-prod"]
        );
        assert_eq!(chosen(&["upgrade-from-prod"]), ["4.3 / upgrade-from-prod"]);
        let e = Selector::parse(["4.4"], &cells).unwrap_err();
        assert!(e.contains("4.4") && e.contains("staging"), "{e}");
        let label = Selector::from_label("sdci:", "sdci:4.3/dev", &cells).unwrap();
        assert_eq!(label.env.as_deref(), Some("dev"));
        assert_eq!(
            Selector::from_label("sdci:", "sdci:all", &cells),
            Some(Selector::default())
        );
        assert_eq!(Selector::from_label("sdci:", "bug", &cells), None);
        assert_eq!(Selector::from_label("sdci:", "sdci:9.9", &cells), None);
    }

    #[test]
    fn an_unknown_key_is_refused_with_the_key_and_its_line() {
        let e = parse(b"qubes: 4.3\nenviroments: [dev]\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("enviroments"), "{e}");
        assert!(e.to_string().starts_with(".github/sdci.yml line 2:"), "{e}");
        let e = parse(SDW.replace("    test:", "    tset:").as_bytes()).unwrap_err();
        assert_eq!(e.line, 11, "{e}");
        assert!(e.message.contains("tset") && e.message.contains("upgrade-from-prod"));
    }

    #[test]
    fn bad_indentation_is_refused_naming_the_line() {
        let e = parse(b"qubes: [\"4.3\"]\nscenarios:\n  a:\n    test: x\n   snapshot: y\n")
            .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let e = parse(b"qubes:\n  - 4.3\n - 4.2\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn an_alias_bomb_is_refused_at_its_first_anchor() {
        let mut bomb =
            String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for (i, c) in ('b'..='i').enumerate() {
            let prev = (b'a' + i as u8) as char;
            bomb.push_str(&format!(
                "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let e = parse(bomb.as_bytes()).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(e.message.contains("anchors"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let e = parse(b"qubes: 4.3\nenvironments: *x\n").unwrap_err();
        assert!(
            e.message.contains("alias") || e.message.contains("YAML"),
            "{e}"
        );
        let e = parse(b"qubes: !!python/object 4.3\n").unwrap_err();
        assert!(e.message.contains("tags"), "{e}");
    }

    #[test]
    fn a_ten_megabyte_file_is_refused_before_it_is_parsed() {
        let big = format!("qubes: 4.3\n# {}\n", "x".repeat(10 * 1024 * 1024));
        let started = std::time::Instant::now();
        let e = parse(big.as_bytes()).unwrap_err();
        assert!(e.message.contains("at most 65536"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn deep_nesting_many_values_duplicates_and_extra_documents_are_refused() {
        let deep = format!("qubes: {}4.3{}\n", "[".repeat(40), "]".repeat(40));
        assert!(parse(deep.as_bytes())
            .unwrap_err()
            .message
            .contains("nested deeper"));
        let many = format!("qubes: [{}]\n", vec!["4.3"; MAX_NODES + 1].join(","));
        assert!(parse(many.as_bytes())
            .unwrap_err()
            .message
            .contains("values"));
        let e = parse(b"qubes: 4.3\nqubes: 4.2\n").unwrap_err();
        assert_eq!((e.line, e.message.contains("twice")), (2, true), "{e}");
        let e = parse(b"qubes: 4.3\n---\nqubes: 4.2\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(parse(b"").unwrap_err().message.contains("empty"));
        assert!(parse(b"qubes: 4.3\n\xff\n")
            .unwrap_err()
            .message
            .contains("UTF-8"));
        assert!(parse(b"- 4.3\n").is_err());
    }

    #[test]
    fn names_that_reach_dom0_are_restricted() {
        for bad in [
            "qubes: 4.3\nenvironments: [\"dev; rm -rf /\"]\n",
            "qubes: 4.3\nenvironments: [Dev]\n",
            "qubes: 4.3\nscenarios:\n  \"a b\": {}\n",
            "qubes: 4.3\nscenarios:\n  a:\n    snapshot: \"../x\"\n",
            "qubes: 4.3\nscenarios:\n  a:\n    qubes: [\"4.2\"]\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let too_many =
            "qubes: [\"4.1\",\"4.2\",\"4.3\",\"4.4\"]\nenvironments: [a,b,c,d,e,f,g,h]\n\
                        scenarios:\n  s:\n";
        assert!(parse(too_many.as_bytes())
            .unwrap_err()
            .message
            .contains("cells"));
    }

    /// The README's example is SDW's likely matrix: it must parse, and expand as it says.
    #[test]
    fn the_readme_example_parses_into_the_cells_it_names() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let section = readme.split("### The matrix: ").nth(1).unwrap();
        let yaml = section
            .split("```yaml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let m = parse(yaml.as_bytes()).unwrap();
        assert_eq!(
            names(&m),
            ["4.3 / dev", "4.3 / staging", "4.3 / upgrade-from-prod"]
        );
        assert_eq!(m.cells()[2].before_dev[0].timeout_secs, 90 * 60);
        assert!(!m.fail_fast);
        let toml = section
            .split("```toml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        assert!(toml.contains("scenarios = { prod-installed = "), "{toml}");
    }

    #[test]
    fn the_plain_matrix_is_one_cell() {
        let m = Matrix::plain("4.2");
        assert_eq!(names(&m), ["4.2 / dev"]);
        assert!(m.cells()[0].runs_on(&Trigger::Push { branch: "x" }));
    }
}
