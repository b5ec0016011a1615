//! Log output: JSON lines (the seed's shape) or text through simple_logger.
//!
//! Both go to stderr so that stdout stays free for CLI output. A record's
//! component is its `target` when set explicitly, else the first module
//! below the crate (`vendetta::api::routes` -> `api`). Key-values given with
//! `log`'s kv syntax (`info!(session_id = id; "...")`) become JSON fields, or
//! `key=value` pairs after the message in text. Secrets are never passed to
//! the logger in the first place; see `config::Secret`.

use crate::config::{LogFormat, LogLevel};
use log::kv::{Key, Value as KvValue, VisitSource};
use log::{Log, Metadata, Record};
use serde_json::{Map, Value};
use std::io::Write;

/// Installs the logger once per process. Later level changes (SIGHUP) go
/// through [`set_level`].
pub(crate) fn init(format: LogFormat, level: LogLevel) {
    let logger: Box<dyn Log> = match format {
        LogFormat::Json => Box::new(JsonLogger),
        LogFormat::Text => Box::new(TextLogger {
            inner: simple_logger::SimpleLogger::new()
                .with_level(log::LevelFilter::Trace)
                .with_utc_timestamps(),
        }),
    };
    // A second init (tests, or a reload) keeps the first logger.
    if log::set_boxed_logger(logger).is_ok() {
        set_level(level);
    }
}

/// The one gate on verbosity; both loggers pass everything below it.
pub(crate) fn set_level(level: LogLevel) {
    log::set_max_level(level.filter());
}

fn component(record: &Record) -> String {
    let target = record.target();
    match target.strip_prefix("vendetta::") {
        Some(rest) => rest.split("::").next().unwrap_or(rest).to_string(),
        None if target == "vendetta" => "agent".to_string(),
        None => target.to_string(),
    }
}

struct JsonLogger;

impl Log for JsonLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let mut obj = Map::new();
        obj.insert(
            "level".into(),
            Value::from(record.level().as_str().to_ascii_lowercase()),
        );
        obj.insert(
            "timestamp".into(),
            Value::from(crate::protocol::time::now_rfc3339()),
        );
        obj.insert("component".into(), Value::from(component(record)));
        obj.insert("message".into(), Value::from(record.args().to_string()));
        let mut visitor = JsonKv(&mut obj);
        let _ = record.key_values().visit(&mut visitor);
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        // One write per line keeps lines whole when threads log at once.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

struct JsonKv<'a>(&'a mut Map<String, Value>);

impl<'kvs> VisitSource<'kvs> for JsonKv<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: KvValue<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_i64() {
            Value::from(n)
        } else if let Some(n) = value.to_u64() {
            Value::from(n)
        } else if let Some(b) = value.to_bool() {
            Value::from(b)
        } else if let Some(f) = value.to_f64() {
            Value::from(f)
        } else {
            Value::from(value.to_string())
        };
        // Reserved fields keep their meaning.
        let k = key.as_str();
        let k = if matches!(k, "level" | "timestamp" | "component" | "message") {
            format!("kv_{k}")
        } else {
            k.to_string()
        };
        self.0.insert(k, v);
        Ok(())
    }
}

struct TextLogger {
    inner: simple_logger::SimpleLogger,
}

impl Log for TextLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let mut pairs = String::new();
        let mut visitor = TextKv(&mut pairs);
        let _ = record.key_values().visit(&mut visitor);
        let component = component(record);
        self.inner.log(
            &Record::builder()
                .args(format_args!("{}{}", record.args(), pairs))
                .level(record.level())
                .target(&component)
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

struct TextKv<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextKv<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: KvValue<'kvs>) -> Result<(), log::kv::Error> {
        let v = value.to_string();
        if v.contains(' ') || v.is_empty() {
            self.0.push_str(&format!(" {key}={v:?}"));
        } else {
            self.0.push_str(&format!(" {key}={v}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_from_target() {
        let r = Record::builder().target("vendetta::api::routes").build();
        assert_eq!(component(&r), "api");
        let r = Record::builder().target("docker").build();
        assert_eq!(component(&r), "docker");
    }
}
