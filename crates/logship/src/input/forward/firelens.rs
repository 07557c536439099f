//! The configuration file the ECS agent generates for a FireLens log router, read so that
//! a task definition written for aws-for-fluent-bit routes the same way with logship.
//!
//! For a router of type `fluentbit` the agent writes Fluent Bit's classic format and
//! mounts it at `/fluent-bit/etc/fluent-bit.conf` (aws/amazon-ecs-agent,
//! `agent/taskresource/firelens/firelensconfig_unix.go` and the config generator it
//! uses): `[INPUT]` sections for the socket `/var/run/fluent.sock`, TCP 24224 and the
//! health check's TCP 8877 (tag `firelens-healthcheck`); with ECS metadata on, a
//! `record_modifier` `[FILTER]` adding `ecs_cluster`, `ecs_task_arn`,
//! `ecs_task_definition` (and `ec2_instance_id` on EC2) to every record; and for each
//! container with the `awsfirelens` log driver an `[OUTPUT]` whose `Name` and other
//! keys are that container's log options, matching the tag its log driver sends
//! (`<container>-firelens-<task id>`), plus a `null` output for the health check.
//!
//! What logship takes from it: the record fields, and each output as a route (tag
//! pattern → logship outputs). `firehose` and `kinesis_firehose` (`delivery_stream`,
//! `region`) and `s3` (`bucket`, `region`, the fixed start of `s3_key_format` as the
//! prefix) are understood; `null` drops. Anything else, a filter it cannot apply
//! (`include-pattern`, `exclude-pattern`) or an `@INCLUDE` of a custom file, is a
//! start-up error that says what to change: silently not routing logs is worse.

use std::path::Path;

use crate::config::OutputSpec;

/// An output a container's log options ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What logship runs for it.
    pub spec: OutputSpec,
    /// Its `region`, when given.
    pub region: Option<String>,
}

/// One `[OUTPUT]`: records whose tag matches go to `target` (`None`: dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The `Match` pattern (`*` matches any run of characters).
    pub pattern: String,
    /// Where they go.
    pub target: Option<Target>,
}

/// What logship uses of a generated FireLens configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Firelens {
    /// Fields added to every record (`record_modifier`'s `Record` lines).
    pub fields: Vec<(String, String)>,
    /// The outputs, in file order.
    pub routes: Vec<Route>,
}

/// The file cannot be used as it is.
#[derive(Debug, thiserror::Error)]
#[error("FireLens configuration {path}, line {line}: {message}")]
pub struct FirelensError {
    /// The file.
    pub path: String,
    /// The line (1-based; 0 for the whole file).
    pub line: usize,
    /// What is wrong and what to do.
    pub message: String,
}

/// Whether `tag` matches Fluent Bit's `Match` `pattern` (`*` is any run of characters).
pub fn matches(pattern: &str, tag: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == tag;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !tag.starts_with(first) || tag.len() < first.len() + last.len() || !tag.ends_with(last) {
        return false;
    }
    let mut rest = &tag[first.len()..tag.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Firelens {
    /// Reads `path`; `Ok(None)` when there is no such file (not on ECS, or not a router).
    pub fn load(path: &Path) -> Result<Option<Self>, FirelensError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FirelensError {
                path: path.display().to_string(),
                line: 0,
                message: format!("cannot read it: {e}"),
            }),
        }
    }

    /// Parses the text of a generated configuration (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self, FirelensError> {
        let err = |line: usize, message: String| FirelensError {
            path: origin.to_string(),
            line,
            message,
        };
        // (line, name, keys) of each section, keys lowercased as Fluent Bit reads them.
        type Section = (usize, String, Vec<(String, String)>);
        let mut sections: Vec<Section> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('@') {
                let directive = rest.split_whitespace().next().unwrap_or("");
                return Err(err(
                    n,
                    format!(
                        "@{directive}: logship does not read Fluent Bit configuration files of its own; \
                         remove config-file-type/config-file-value from the router's firelensConfiguration \
                         and give logship its outputs as --output flags (LOGSHIP_OUTPUT)"
                    ),
                ));
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push((n, name.trim().to_ascii_uppercase(), Vec::new()));
                continue;
            }
            let Some((_, _, keys)) = sections.last_mut() else {
                return Err(err(n, format!("{line:?} is outside any [SECTION]")));
            };
            let (key, value) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(k, v)| (k, v.trim()));
            keys.push((key.to_ascii_lowercase(), value.to_string()));
        }
        let mut out = Self::default();
        for (n, section, keys) in sections {
            let get = |k: &str| {
                keys.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_str())
            };
            let name = get("name").unwrap_or("").to_ascii_lowercase();
            match section.as_str() {
                // The agent's inputs are logship's own defaults (--forward-socket,
                // --forward-listen, --forward-health).
                "SERVICE" | "INPUT" => {}
                "FILTER" => match name.as_str() {
                    "record_modifier" => {
                        for (k, v) in &keys {
                            if k == "record" {
                                let (field, value) =
                                    v.split_once(char::is_whitespace).unwrap_or((v, ""));
                                out.fields
                                    .push((field.to_string(), value.trim().to_string()));
                            }
                        }
                    }
                    "grep" => {
                        return Err(err(
                            n,
                            "a grep filter (the log options include-pattern or exclude-pattern): \
                             logship ships every line; remove those options from the container's logConfiguration"
                                .into(),
                        ));
                    }
                    other => {
                        return Err(err(
                            n,
                            format!("filter {other:?} is not one logship applies"),
                        ));
                    }
                },
                "OUTPUT" => {
                    let pattern = get("match").unwrap_or("*").to_string();
                    let target = target(&name, &keys).map_err(|m| err(n, m))?;
                    out.routes.push(Route { pattern, target });
                }
                other => return Err(err(n, format!("unknown section [{other}]"))),
            }
        }
        Ok(out)
    }

    /// The routes whose pattern `tag` matches; empty when none does.
    pub fn routes_for<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes.iter().filter(move |r| matches(&r.pattern, tag))
    }
}

/// The logship output of one `[OUTPUT]`'s keys.
fn target(name: &str, keys: &[(String, String)]) -> Result<Option<Target>, String> {
    let get = |k: &str| {
        keys.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let (spec, used): (OutputSpec, &[&str]) = match name {
        "null" => return Ok(None),
        "firehose" | "kinesis_firehose" => {
            let stream = get("delivery_stream").ok_or_else(|| {
                format!("output {name} without delivery_stream: add the log option delivery_stream")
            })?;
            let spec = crate::config::parse_output(&format!("firehose:{stream}"))?;
            (spec, &["name", "match", "delivery_stream", "region"])
        }
        "s3" => {
            let bucket = get("bucket")
                .ok_or_else(|| "output s3 without bucket: add the log option bucket".to_string())?;
            // The fixed start of the key format is the prefix; logship's key template
            // (--s3-key-template) names the objects below it.
            let prefix = get("s3_key_format")
                .map(|f| {
                    let fixed = f.split(['$', '%']).next().unwrap_or("");
                    fixed
                        .rsplit_once('/')
                        .map_or("", |(dir, _)| dir)
                        .trim_matches('/')
                        .to_string()
                })
                .unwrap_or_default();
            let spec = crate::config::parse_output(&format!("s3://{bucket}/{prefix}"))?;
            (
                spec,
                &["name", "match", "bucket", "region", "s3_key_format"],
            )
        }
        "" => return Err("an [OUTPUT] without Name: the log option Name is required".into()),
        other => {
            return Err(format!(
                "output {other:?} is not one logship ships to; use Name firehose (or kinesis_firehose) \
                 with delivery_stream, or Name s3 with bucket, or run aws-for-fluent-bit for this container"
            ));
        }
    };
    let ignored: Vec<&str> = keys
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !used.contains(k))
        .collect();
    if !ignored.is_empty() {
        tracing::warn!(output = %spec, options = ?ignored, "FireLens log options logship does not use; logship's own flags decide those");
    }
    Ok(Some(Target {
        spec,
        region: get("region"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the ECS agent writes for a `fluentbit` router (its inputs, the
    /// record_modifier with ECS metadata, a null output for the health check, one output
    /// per container with the container's log options), as in the agent's
    /// firelensconfig_unix.go and its tests; names and ids are ours.
    const GENERATED: &str = include_str!("../../../tests/fixtures/firelens/fluent-bit.conf");

    #[test]
    fn the_generated_file_routes_each_container_to_its_options() {
        let f = Firelens::parse(GENERATED, "fluent-bit.conf").unwrap();
        assert_eq!(
            f.fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["ecs_cluster", "ecs_task_arn", "ecs_task_definition"]
        );
        assert_eq!(f.fields[2].1, "airflow-scheduler:7");
        let tag = |t: &str| {
            f.routes_for(t)
                .map(|r| r.target.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(tag("firelens-healthcheck"), vec![None]);
        assert_eq!(
            tag("scheduler-firelens-0123456789abcdef0123456789abcdef"),
            vec![Some(Target {
                spec: OutputSpec::Firehose {
                    stream: "airflow-containers".into()
                },
                region: Some("us-east-1".into()),
            })]
        );
        assert_eq!(
            tag("triggerer-firelens-0123456789abcdef0123456789abcdef"),
            vec![Some(Target {
                spec: OutputSpec::S3 {
                    bucket: "airflow-container-logs".into(),
                    prefix: "containers".into(),
                },
                region: Some("us-east-1".into()),
            })]
        );
        assert!(tag("webserver-firelens-x").is_empty());
    }

    #[test]
    fn unknown_outputs_filters_and_includes_are_start_up_errors() {
        let cloudwatch =
            "[OUTPUT]\n    Name cloudwatch_logs\n    Match app-firelens*\n    log_group_name x\n";
        let e = Firelens::parse(cloudwatch, "f").unwrap_err();
        assert!(e.to_string().contains("cloudwatch_logs"), "{e}");
        assert_eq!(e.line, 1);
        let include = "[INPUT]\n    Name forward\n@INCLUDE /extra.conf\n";
        let e = Firelens::parse(include, "f").unwrap_err();
        assert!(e.to_string().contains("config-file-value"), "{e}");
        let grep = "[FILTER]\n    Name grep\n    Match app-firelens*\n    Regex log error\n";
        assert!(
            Firelens::parse(grep, "f")
                .unwrap_err()
                .to_string()
                .contains("include-pattern")
        );
        let no_stream = "[OUTPUT]\n    Name kinesis_firehose\n    Match a*\n";
        assert!(
            Firelens::parse(no_stream, "f")
                .unwrap_err()
                .to_string()
                .contains("delivery_stream")
        );
    }

    #[test]
    fn match_patterns() {
        assert!(matches("*", "anything"));
        assert!(matches("app-firelens*", "app-firelens-abc"));
        assert!(!matches("app-firelens*", "app2-firelens-abc"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxc"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exact2"));
        assert!(!matches("ab*ba", "aba"), "the ends may not overlap");
    }

    #[test]
    fn a_missing_file_is_no_configuration() {
        assert_eq!(
            Firelens::load(Path::new("/nonexistent/fluent-bit.conf")).unwrap(),
            None
        );
    }
}
