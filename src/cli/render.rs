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

pub(super) fn print_sessions(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                scalar(&s["id"]),
                scalar(&s["provider"]),
                scalar(&s["status"]),
                scalar(&s["image"]),
                ports_text(&s["ports"]),
                scalar(&s["created"]),
            ]
        })
        .collect();
    print_table(
        &["ID", "PROVIDER", "STATUS", "IMAGE", "PORTS", "CREATED"],
        &rows,
    );
}

pub(super) fn print_services(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                scalar(&s["id"]),
                scalar(&s["provider"]),
                ports_text(&s["ports"]),
                scalar(&s["health"]["status"]),
                scalar(&s["health"]["detail"]),
            ]
        })
        .collect();
    print_table(&["ID", "PROVIDER", "PORTS", "HEALTH", "DETAIL"], &rows);
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
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
