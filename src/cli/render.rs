//! Results as the terminal shows them: tables and indented documents.

use serde_json::Value;

/// Prints a JSON document as indented `key: value` lines.
pub(super) fn print_doc(v: &Value, indent: &str) {
    if let Value::Object(m) = v {
        for (k, val) in m {
            match val {
                Value::Object(inner) if !inner.is_empty() => {
                    println!("{indent}{k}:");
                    print_doc(val, &format!("{indent}  "));
                }
                Value::Array(items) => {
                    let parts: Vec<String> = items.iter().map(scalar).collect();
                    println!("{indent}{k}: {}", parts.join(", "));
                }
                _ => println!("{indent}{k}: {}", scalar(val)),
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Object(m) if m.is_empty() => "-".into(),
        other => other.to_string(),
    }
}

fn ports_text(ports: &Value) -> String {
    ports
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{}->{k}", scalar(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// A table column: its header and how a cell is taken from an item.
type Column = (&'static str, fn(&Value) -> String);

pub(super) fn print_sessions(items: &[Value]) {
    print_table(
        items,
        &[
            ("ID", |s| scalar(&s["id"])),
            ("PROVIDER", |s| scalar(&s["provider"])),
            ("STATUS", |s| scalar(&s["status"])),
            ("IMAGE", |s| scalar(&s["image"])),
            ("PORTS", |s| ports_text(&s["ports"])),
            ("CREATED", |s| scalar(&s["created"])),
        ],
    );
}

pub(super) fn print_services(items: &[Value]) {
    print_table(
        items,
        &[
            ("ID", |s| scalar(&s["id"])),
            ("PROVIDER", |s| scalar(&s["provider"])),
            ("PORTS", |s| ports_text(&s["ports"])),
            ("HEALTH", |s| scalar(&s["health"]["status"])),
            ("DETAIL", |s| scalar(&s["health"]["detail"])),
        ],
    );
}

fn print_table(items: &[Value], columns: &[Column]) {
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, cell)| cell(item)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}
