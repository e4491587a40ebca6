//! The scenario file format, and its validation with errors a person can act on: the file,
//! the field, and a suggestion when a name is close to a known one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

/// Every action a scenario may name, with its required and optional parameters.
pub const ACTIONS: &[(&str, &[&str], &[&str])] = &[
    ("create", &["path"], &["content", "size"]),
    ("modify", &["path"], &["content", "size"]),
    ("append", &["path"], &["content"]),
    ("delete", &["path"], &[]),
    ("move_file", &["from", "to"], &[]),
    ("move_dir", &["from", "to"], &[]),
    ("make_tree", &["root"], &["depth", "fanout", "files"]),
    ("burst", &["dir", "count"], &["size"]),
    ("large_file", &["path", "size_mb"], &["random"]),
    ("editor_save", &["path"], &["content"]),
    ("restart_agent", &["agent"], &[]),
    ("crash_agent", &["agent"], &[]),
    ("pause_agent", &["agent", "for_ms"], &[]),
];

const TOP_FIELDS: &[&str] = &[
    "name",
    "description",
    "duration_s",
    "slaves",
    "actions",
    "expect",
    "bus",
];
const BUS_FIELDS: &[&str] = &["keep_history", "segment_size", "gc_interval", "gc_grace"];
const ACTION_FIELDS: &[&str] = &[
    "action",
    "params",
    "every_ms",
    "at_startup",
    "at_teardown",
    "description",
];
const EXPECT_FIELDS: &[&str] = &["converged", "no_errors", "latency_ms", "counts", "state"];
const STATE_FIELDS: &[&str] = &["max_ratio", "plus_mib"];
const LATENCY_FIELDS: &[&str] = &["p50", "p90", "p99", "max"];
const COUNT_FIELDS: &[&str] = &["min", "max"];
const TAGS: &[&str] = &["join", "ready", "notify", "consume", "error", "leave"];
const OPS: &[&str] = &["put", "delete", "move"];

/// One action of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ActionSpec {
    pub action: String,
    pub params: Map<String, Value>,
    /// Run again every this many milliseconds while the scenario lasts.
    pub every_ms: Option<u64>,
    /// Run once when the scenario starts (default true).
    pub at_startup: bool,
    /// Run once more when the scenario ends (default false).
    pub at_teardown: bool,
}

impl ActionSpec {
    /// A short label for reports: the action and its main parameter.
    pub fn label(&self) -> String {
        let main = ["path", "from", "dir", "root", "agent"]
            .iter()
            .find_map(|key| self.params.get(*key).and_then(Value::as_str));
        match main {
            Some(main) => format!("{} {main}", self.action),
            None => self.action.clone(),
        }
    }
}

/// Bounds on notify-to-consume latency, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyBounds {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// Bounds on how many events of a kind the log holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CountBounds {
    pub min: Option<u64>,
    pub max: Option<u64>,
}

/// A bound on the bus's state directory: at most `max_ratio` times the master tree's size
/// plus `plus_mib`, over the second half of the run and at its end.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StateBound {
    pub max_ratio: f64,
    pub plus_mib: f64,
}

impl StateBound {
    /// Whether a state of `state` bytes is within the bound for a tree of `tree` bytes.
    pub fn allows(&self, state: u64, tree: u64) -> bool {
        state as f64 <= self.max_ratio * tree as f64 + self.plus_mib * (1 << 20) as f64
    }
}

/// What the log must show at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Expect {
    /// Every notify answered, the checker's invariants hold, every directory matches.
    pub converged: bool,
    /// No `error` event at all.
    pub no_errors: bool,
    pub latency_ms: LatencyBounds,
    /// Keys: a tag (`notify`) or a tag and an op (`notify.put`).
    pub counts: BTreeMap<String, CountBounds>,
    pub state: Option<StateBound>,
}

/// A validated scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: Option<String>,
    pub duration_s: f64,
    pub slaves: usize,
    pub actions: Vec<ActionSpec>,
    pub expect: Expect,
    /// How the bus keeps its log and content: `filesync master` options, as given
    /// (`--keep-history 0s`...).
    pub bus_args: Vec<String>,
}

impl Scenario {
    /// How long the bus's collector takes to free what a change superseded, by the
    /// scenario's own settings: its interval plus the grace period (zero when the scenario
    /// leaves them to the bus's defaults, an hour's grace).
    pub fn collector_pass(&self) -> std::time::Duration {
        let setting = |flag: &str| {
            self.bus_args
                .iter()
                .position(|arg| arg == flag)
                .and_then(|at| self.bus_args.get(at + 1))
                .and_then(|text| humantime::parse_duration(text).ok())
        };
        match (setting("--gc-interval"), setting("--gc-grace")) {
            (Some(interval), Some(grace)) => interval + grace,
            _ => std::time::Duration::ZERO,
        }
    }
}

/// Why a scenario file is not valid: where, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.field, self.message)
        }
    }
}

impl std::error::Error for ScenarioError {}

fn suggest(unknown: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, k)) if score > 0.8 => format!("; did you mean `{k}`?"),
        _ => format!("; expected one of: {}", known.join(", ")),
    }
}

struct Checker<'a> {
    file: &'a str,
}

impl Checker<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
        ScenarioError {
            file: self.file.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn object<'v>(
        &self,
        value: &'v Value,
        field: &str,
    ) -> Result<&'v Map<String, Value>, ScenarioError> {
        value
            .as_object()
            .ok_or_else(|| self.err(field, "must be an object"))
    }

    fn known_fields(
        &self,
        object: &Map<String, Value>,
        field: &str,
        known: &[&str],
    ) -> Result<(), ScenarioError> {
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                let at = if field.is_empty() {
                    key.clone()
                } else {
                    format!("{field}.{key}")
                };
                return Err(self.err(at, format!("unknown field `{key}`{}", suggest(key, known))));
            }
        }
        Ok(())
    }

    fn number(
        &self,
        object: &Map<String, Value>,
        key: &str,
        field: &str,
    ) -> Result<Option<f64>, ScenarioError> {
        match object.get(key) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .filter(|n| *n >= 0.0)
                .map(Some)
                .ok_or_else(|| self.err(format!("{field}{key}"), "must be a non-negative number")),
        }
    }

    fn boolean(
        &self,
        object: &Map<String, Value>,
        key: &str,
        field: &str,
        default: bool,
    ) -> Result<bool, ScenarioError> {
        match object.get(key) {
            None => Ok(default),
            Some(value) => value
                .as_bool()
                .ok_or_else(|| self.err(format!("{field}{key}"), "must be true or false")),
        }
    }
}

/// Parses and validates scenario JSON; `file` names it in errors and must match `name`.
/// The first problem found; [`parse_all`] finds every one.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    parse_all(file, text).map_err(|mut errors| errors.remove(0))
}

/// Parses and validates scenario JSON, reporting every problem found (at least one on
/// `Err`): each top-level section and each action is checked on its own.
pub fn parse_all(file: &str, text: &str) -> Result<Scenario, Vec<ScenarioError>> {
    let c = Checker { file };
    let value: Value =
        serde_json::from_str(text).map_err(|err| vec![c.err("", format!("not JSON: {err}"))])?;
    let top = c.object(&value, "(top level)").map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let e = &mut errors;
    take(e, c.known_fields(top, "", TOP_FIELDS));
    let header = take(e, parse_header(&c, top));
    let mut actions = Vec::new();
    match top.get("actions").map(Value::as_array) {
        None => errors.push(c.err("actions", "required, a list")),
        Some(None) => errors.push(c.err("actions", "must be a list")),
        Some(Some(list)) => {
            for (idx, item) in list.iter().enumerate() {
                actions.extend(take(&mut errors, parse_action(&c, idx, item)));
            }
        }
    }
    let expect = match top.get("expect") {
        None => Some(Expect {
            converged: true,
            no_errors: true,
            latency_ms: LatencyBounds::default(),
            counts: BTreeMap::new(),
            state: None,
        }),
        Some(value) => take(&mut errors, parse_expect(&c, value)),
    };
    let bus_args = match top.get("bus") {
        None => Some(Vec::new()),
        Some(value) => take(&mut errors, parse_bus(&c, value)),
    };
    match (header, expect, bus_args) {
        (Some((name, description, duration_s, slaves)), Some(expect), Some(bus_args))
            if errors.is_empty() =>
        {
            Ok(Scenario {
                name,
                description,
                duration_s,
                slaves,
                actions,
                expect,
                bus_args,
            })
        }
        _ => Err(errors),
    }
}

/// The value, or `None` with its error added to `errors`.
fn take<T>(errors: &mut Vec<ScenarioError>, result: Result<T, ScenarioError>) -> Option<T> {
    result.map_err(|err| errors.push(err)).ok()
}

/// `name` (matching the file's), `description`, `duration_s`, `slaves`.
fn parse_header(
    c: &Checker<'_>,
    top: &Map<String, Value>,
) -> Result<(String, Option<String>, f64, usize), ScenarioError> {
    let name = top
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| c.err("name", "required, a string"))?
        .to_owned();
    let stem = Path::new(c.file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    if !stem.is_empty() && stem != name {
        return Err(c.err(
            "name",
            format!("is `{name}` but the file is named `{stem}.json`; they must match"),
        ));
    }
    let description = top
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let duration_s = c
        .number(top, "duration_s", "")?
        .ok_or_else(|| c.err("duration_s", "required, in seconds"))?;
    let slaves = c.number(top, "slaves", "")?.unwrap_or(1.0);
    if slaves.fract() != 0.0 || slaves > 16.0 {
        return Err(c.err("slaves", "must be a whole number from 0 to 16"));
    }
    Ok((name, description, duration_s, slaves as usize))
}

/// `actions[idx]`.
fn parse_action(c: &Checker<'_>, idx: usize, item: &Value) -> Result<ActionSpec, ScenarioError> {
    let field = format!("actions[{idx}]");
    let object = c.object(item, &field)?;
    c.known_fields(object, &field, ACTION_FIELDS)?;
    let action = object
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| c.err(format!("{field}.action"), "required, the action's name"))?;
    let names: Vec<&str> = ACTIONS.iter().map(|(n, _, _)| *n).collect();
    let Some((_, required, optional)) = ACTIONS.iter().find(|(n, _, _)| *n == action) else {
        return Err(c.err(
            format!("{field}.action"),
            format!("unknown action `{action}`{}", suggest(action, &names)),
        ));
    };
    let params = match object.get("params") {
        None => Map::new(),
        Some(value) => c.object(value, &format!("{field}.params"))?.clone(),
    };
    let allowed: Vec<&str> = required.iter().chain(optional.iter()).copied().collect();
    c.known_fields(&params, &format!("{field}.params"), &allowed)?;
    for key in *required {
        if !params.contains_key(*key) {
            return Err(c.err(
                format!("{field}.params.{key}"),
                format!("required by `{action}`"),
            ));
        }
    }
    for key in ["path", "from", "to", "dir", "root"] {
        if let Some(path) = params.get(key) {
            let text = path
                .as_str()
                .ok_or_else(|| c.err(format!("{field}.params.{key}"), "must be a string"))?;
            let probe = text.replace("{n}", "0");
            if filesync_master::RelPath::new(&probe).is_err() {
                return Err(c.err(
                    format!("{field}.params.{key}"),
                    format!("`{text}` is not a relative path inside the root"),
                ));
            }
        }
    }
    let every_ms = c
        .number(object, "every_ms", &format!("{field}."))?
        .map(|n| n as u64);
    if every_ms == Some(0) {
        return Err(c.err(format!("{field}.every_ms"), "must be at least 1"));
    }
    Ok(ActionSpec {
        action: action.to_owned(),
        params,
        every_ms,
        at_startup: c.boolean(object, "at_startup", &format!("{field}."), true)?,
        at_teardown: c.boolean(object, "at_teardown", &format!("{field}."), false)?,
    })
}

/// `bus`: the retention options, as `filesync master` arguments.
fn parse_bus(c: &Checker<'_>, value: &Value) -> Result<Vec<String>, ScenarioError> {
    let object = c.object(value, "bus")?;
    c.known_fields(object, "bus", BUS_FIELDS)?;
    let mut args = Vec::new();
    for key in ["keep_history", "gc_interval", "gc_grace"] {
        let Some(value) = object.get(key) else {
            continue;
        };
        let text = value
            .as_str()
            .filter(|t| humantime::parse_duration(t).is_ok())
            .ok_or_else(|| {
                c.err(
                    format!("bus.{key}"),
                    "must be a duration such as \"1h\" or \"500ms\"",
                )
            })?;
        args.push(format!("--{}", key.replace('_', "-")));
        args.push(text.to_owned());
    }
    if let Some(size) = c.number(object, "segment_size", "bus.")? {
        args.push("--segment-size".into());
        args.push((size as u64).to_string());
    }
    Ok(args)
}

fn parse_expect(c: &Checker<'_>, value: &Value) -> Result<Expect, ScenarioError> {
    let object = c.object(value, "expect")?;
    c.known_fields(object, "expect", EXPECT_FIELDS)?;
    let mut latency_ms = LatencyBounds::default();
    if let Some(value) = object.get("latency_ms") {
        let bounds = c.object(value, "expect.latency_ms")?;
        c.known_fields(bounds, "expect.latency_ms", LATENCY_FIELDS)?;
        latency_ms = LatencyBounds {
            p50: c.number(bounds, "p50", "expect.latency_ms.")?,
            p90: c.number(bounds, "p90", "expect.latency_ms.")?,
            p99: c.number(bounds, "p99", "expect.latency_ms.")?,
            max: c.number(bounds, "max", "expect.latency_ms.")?,
        };
    }
    let mut counts = BTreeMap::new();
    if let Some(value) = object.get("counts") {
        for (key, bounds) in c.object(value, "expect.counts")? {
            let field = format!("expect.counts.{key}");
            let (tag, op) = key
                .split_once('.')
                .map_or((key.as_str(), None), |(t, o)| (t, Some(o)));
            if !TAGS.contains(&tag) {
                return Err(c.err(&field, format!("unknown tag `{tag}`{}", suggest(tag, TAGS))));
            }
            if let Some(op) = op.filter(|op| !OPS.contains(op)) {
                return Err(c.err(&field, format!("unknown op `{op}`{}", suggest(op, OPS))));
            }
            let bounds = c.object(bounds, &field)?;
            c.known_fields(bounds, &field, COUNT_FIELDS)?;
            counts.insert(
                key.clone(),
                CountBounds {
                    min: c
                        .number(bounds, "min", &format!("{field}."))?
                        .map(|n| n as u64),
                    max: c
                        .number(bounds, "max", &format!("{field}."))?
                        .map(|n| n as u64),
                },
            );
        }
    }
    let state = match object.get("state") {
        None => None,
        Some(value) => {
            let bound = c.object(value, "expect.state")?;
            c.known_fields(bound, "expect.state", STATE_FIELDS)?;
            Some(StateBound {
                max_ratio: c
                    .number(bound, "max_ratio", "expect.state.")?
                    .ok_or_else(|| c.err("expect.state.max_ratio", "required"))?,
                plus_mib: c.number(bound, "plus_mib", "expect.state.")?.unwrap_or(0.0),
            })
        }
    };
    Ok(Expect {
        state,
        converged: c.boolean(object, "converged", "expect.", true)?,
        no_errors: c.boolean(object, "no_errors", "expect.", true)?,
        latency_ms,
        counts,
    })
}

/// Reads and validates one scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    load_all(path).map_err(|mut errors| errors.remove(0))
}

/// Reads and validates one scenario file, reporting every problem found.
pub fn load_all(path: &Path) -> Result<Scenario, Vec<ScenarioError>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![ScenarioError {
            file: file.clone(),
            field: String::new(),
            message: format!("cannot read: {err}"),
        }]
    })?;
    parse_all(&file, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        parse("demo.json", json).expect_err("invalid").to_string()
    }

    #[test]
    fn a_minimal_scenario_gets_its_defaults() {
        let s = parse("demo.json", r#"{"name":"demo","duration_s":1,"actions":[{"action":"create","params":{"path":"a"}}]}"#)
            .expect("valid");
        assert_eq!(s.slaves, 1);
        assert!(s.actions[0].at_startup && !s.actions[0].at_teardown);
        assert!(s.expect.converged && s.expect.no_errors);
    }

    #[test]
    fn mistakes_name_the_file_the_field_and_a_fix() {
        assert_eq!(
            error(r#"{"name":"demo","duraton_s":1,"actions":[]}"#),
            "demo.json: duraton_s: unknown field `duraton_s`; did you mean `duration_s`?"
        );
        assert_eq!(
            error(
                r#"{"name":"demo","duration_s":1,"actions":[{"action":"creat","params":{"path":"a"}}]}"#
            ),
            "demo.json: actions[0].action: unknown action `creat`; did you mean `create`?"
        );
        assert_eq!(
            error(
                r#"{"name":"demo","duration_s":1,"actions":[{"action":"burst","params":{"dir":"d","cout":3}}]}"#
            ),
            "demo.json: actions[0].params.cout: unknown field `cout`; did you mean `count`?"
        );
        assert!(error(r#"{"name":"other","duration_s":1,"actions":[]}"#).contains("must match"));
        assert!(error(r#"{"name":"demo","duration_s":1,"actions":[{"action":"delete","params":{"path":"../x"}}]}"#)
            .contains("not a relative path"));
        assert!(error(r#"{"name":"demo","duration_s":1,"actions":[],"expect":{"counts":{"notfy.put":{"min":1}}}}"#)
            .contains("did you mean `notify`"));
        assert!(error(r#"{"name":"demo","duration_s":1,"actions":[{"action":"large_file","params":{"path":"x"}}]}"#)
            .contains("params.size_mb: required"));
    }
}
