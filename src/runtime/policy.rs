//! What the operator allows, checked when a command is admitted, for the
//! local API and the coordination server alike: `allowed_commands`, the
//! programs an exec may start, the images a session may use, the most
//! resources it may ask for. A refusal names the rule that refused.

use crate::config::{Config, SessionResources};
use crate::protocol::command::{CreateParams, ExecParams, Request};
use crate::protocol::{Command, ProviderKind};

/// Why `command` may not run here, or None.
pub(crate) fn refusal(config: &Config, command: &Command) -> Option<String> {
    if !config.command_allowed(&command.name()) {
        return Some(format!(
            "{} is not in allowed_commands on this node",
            command.name()
        ));
    }
    match &command.request {
        Ok(Request::SessionExec(p)) => program_refusal(config, p),
        Ok(Request::SessionCreate(p)) => {
            image_refusal(config, p).or_else(|| resources_refusal(&config.limits.session_max, p))
        }
        _ => None,
    }
}

fn program_refusal(config: &Config, p: &ExecParams) -> Option<String> {
    let allowed = &config.exec.allowed_programs;
    let argv = p.argv();
    let program = argv.first().map(String::as_str).unwrap_or("");
    let ok = allowed.is_empty()
        || allowed.iter().any(|a| {
            a == program || (!a.contains('/') && program.rsplit('/').next() == Some(a.as_str()))
        });
    (!ok).then(|| {
        format!(
            "params.command: {program:?} is not in exec.allowed_programs ({})",
            allowed.join(", ")
        )
    })
}

/// `pattern` is a name, or a prefix ending in `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn image_refusal(config: &Config, p: &CreateParams) -> Option<String> {
    let (allowed, image, rule) = match p.provider.unwrap_or(config.provider) {
        ProviderKind::Docker => (
            &config.docker.allowed_images,
            p.image
                .clone()
                .unwrap_or_else(|| config.docker.image.clone()),
            "docker.allowed_images",
        ),
        ProviderKind::Lxc => (
            &config.lxc.allowed_templates,
            // The template is the first word; its arguments follow.
            p.image
                .as_deref()
                .and_then(|i| i.split_whitespace().next())
                .unwrap_or(&config.lxc.template)
                .to_string(),
            "lxc.allowed_templates",
        ),
        // QEMU's base images are bounded by qemu.image_roots.
        ProviderKind::Qemu => return None,
    };
    (!allowed.is_empty() && !allowed.iter().any(|a| matches(a, &image))).then(|| {
        format!(
            "params.image: {image:?} is not in {rule} ({})",
            allowed.join(", ")
        )
    })
}

fn resources_refusal(max: &SessionResources, p: &CreateParams) -> Option<String> {
    let r = &p.resources;
    let over = |name: &str, asked: String, most: String| {
        Some(format!(
            "params.resources.{name}: {asked} is more than limits.session_max.{name} ({most})"
        ))
    };
    if let (Some(asked), Some(most)) = (r.memory, max.memory) {
        if asked > most {
            return over(
                "memory",
                crate::protocol::size::format(asked),
                crate::protocol::size::format(most),
            );
        }
    }
    if let (Some(asked), Some(most)) = (r.cpus, max.cpus) {
        if asked > most {
            return over("cpus", asked.to_string(), most.to_string());
        }
    }
    if let (Some(asked), Some(most)) = (r.pids, max.pids) {
        if asked > most {
            return over("pids", asked.to_string(), most.to_string());
        }
    }
    None
}

/// The resources a create gets: what it asks for, else the defaults.
pub(crate) fn with_defaults(
    asked: &crate::protocol::command::Resources,
    defaults: &SessionResources,
) -> crate::protocol::command::Resources {
    crate::protocol::command::Resources {
        memory: asked.memory.or(defaults.memory),
        cpus: asked.cpus.or(defaults.cpus),
        pids: asked.pids.or(defaults.pids),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn command(v: serde_json::Value) -> Command {
        crate::protocol::command::from_value(v).unwrap()
    }

    fn config(yaml: &str) -> Config {
        let c = crate::config::parse_text(std::path::Path::new("t.yaml"), yaml).unwrap();
        c.validate(std::path::Path::new("t.yaml")).unwrap();
        c
    }

    #[test]
    fn each_rule_refuses_with_its_name() {
        let c = config(
            "exec:\n  allowed_programs: [sh, /usr/bin/make]\ndocker:\n  allowed_images: [\"registry.local/team/*\"]\nlxc:\n  allowed_templates: [busybox]\nlimits:\n  session_max: {memory: 1g, cpus: 2, pids: 100}\n",
        );
        let exec = |argv: serde_json::Value| {
            refusal(
                &c,
                &command(json!({"id": "e", "type": "session", "action": "exec",
                "params": {"session_id": "s", "command": argv}})),
            )
        };
        assert_eq!(exec(json!(["/bin/sh", "-c", "x"])), None);
        assert_eq!(exec(json!(["/usr/bin/make"])), None);
        assert_eq!(
            exec(json!(["make"])),
            Some(
                "params.command: \"make\" is not in exec.allowed_programs (sh, /usr/bin/make)"
                    .into()
            )
        );
        let create = |params: serde_json::Value| {
            let mut p = json!({"session_id": "s"});
            p.as_object_mut()
                .unwrap()
                .extend(params.as_object().unwrap().clone());
            refusal(
                &c,
                &command(json!({"id": "c", "type": "session", "action": "create", "params": p})),
            )
        };
        assert_eq!(create(json!({"image": "registry.local/team/app:1"})), None);
        assert_eq!(
            create(json!({})),
            Some("params.image: \"debian:stable-slim\" is not in docker.allowed_images (registry.local/team/*)".into()),
            "the default image is checked too"
        );
        assert_eq!(create(json!({"provider": "lxc", "image": "busybox"})), None);
        assert_eq!(
            create(json!({"provider": "lxc", "image": "download --dist debian"})),
            Some("params.image: \"download\" is not in lxc.allowed_templates (busybox)".into())
        );
        assert_eq!(
            create(json!({"image": "registry.local/team/a", "resources": {"memory": "2g"}})),
            Some("params.resources.memory: 2g is more than limits.session_max.memory (1g)".into())
        );
        assert_eq!(
            create(json!({"image": "registry.local/team/a", "resources": {"cpus": 2.5}})),
            Some("params.resources.cpus: 2.5 is more than limits.session_max.cpus (2)".into())
        );
        let defaults = SessionResources {
            memory: Some(256 << 20),
            cpus: None,
            pids: Some(64),
        };
        let asked = crate::protocol::command::Resources {
            memory: None,
            cpus: Some(1.0),
            pids: Some(10),
        };
        assert_eq!(
            with_defaults(&asked, &defaults),
            crate::protocol::command::Resources {
                memory: Some(256 << 20),
                cpus: Some(1.0),
                pids: Some(10)
            }
        );
    }
}
