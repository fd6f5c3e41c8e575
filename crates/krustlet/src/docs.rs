//! The configuration reference (`docs/configuration.md`), generated from the clap definition
//! of the command line so that it cannot drift from it. `krustlet docs config` prints it; a
//! test fails when the checked-in file differs.

use clap::{Arg, ArgAction, Args, Command, CommandFactory};
use kubelet::config::{CONFIG_KEY_EXCEPTIONS, Flags};

use crate::cli::Cli;

/// The command that regenerates the reference.
pub const REGENERATE: &str = "cargo run -p krustlet -- docs config > docs/configuration.md";

/// `--kebab-name` -> `camelName`, the config-file key of a flag.
fn camel(long: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in long.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A markdown table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The help text without its `[default: ...]`, and the default (from clap or from the text).
fn help_and_default(arg: &Arg) -> (String, String) {
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let clap_default: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if let Some((text, rest)) = help.split_once("[default: ") {
        let default = rest.trim_end().trim_end_matches(']').to_string();
        return (text.trim().to_string(), default);
    }
    (help.trim().to_string(), clap_default.join(","))
}

fn flag_name(arg: &Arg) -> Option<String> {
    let long = arg.get_long()?;
    let value = match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count => String::new(),
        _ => arg
            .get_value_names()
            .and_then(|n| n.first())
            .map(|n| format!(" {n}"))
            .unwrap_or_else(|| " VALUE".into()),
    };
    let short = arg
        .get_short()
        .map(|s| format!("-{s}, "))
        .unwrap_or_default();
    let aliases: String = arg
        .get_visible_aliases()
        .unwrap_or_default()
        .iter()
        .map(|a| format!(", --{a}"))
        .collect();
    Some(format!("{short}--{long}{value}{aliases}"))
}

/// One table of flags; `keys` says whether they have config-file keys.
fn table(out: &mut String, args: &[&Arg], keys: bool) {
    if keys {
        out.push_str("| flag | environment | config key | default | description |\n");
        out.push_str("| --- | --- | --- | --- | --- |\n");
    } else {
        out.push_str("| flag | environment | default | description |\n");
        out.push_str("| --- | --- | --- | --- |\n");
    }
    for arg in args {
        let Some(name) = flag_name(arg) else { continue };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let (help, default) = help_and_default(arg);
        let default = if default.is_empty() {
            String::new()
        } else {
            format!("`{}`", cell(&default))
        };
        let key = match arg.get_long() {
            // `--config` names the file itself.
            Some("config") | None => String::new(),
            Some(long) => match CONFIG_KEY_EXCEPTIONS.iter().find(|(flag, _)| *flag == long) {
                Some((_, key)) => format!("`{key}`"),
                None => format!("`{}`", camel(long)),
            },
        };
        if keys {
            out.push_str(&format!(
                "| `{name}` | {env} | {key} | {default} | {} |\n",
                cell(&help)
            ));
        } else {
            out.push_str(&format!(
                "| `{name}` | {env} | {default} | {} |\n",
                cell(&help)
            ));
        }
    }
    out.push('\n');
}

fn positionals(out: &mut String, command: &Command) {
    let args: Vec<&Arg> = command.get_positionals().collect();
    if args.is_empty() {
        return;
    }
    out.push_str("| argument | description |\n| --- | --- |\n");
    for arg in args {
        let (help, _) = help_and_default(arg);
        out.push_str(&format!("| `{}` | {} |\n", arg.get_id(), cell(&help)));
    }
    out.push('\n');
}

/// The whole reference, as markdown.
pub fn configuration_reference() -> String {
    let cli = Cli::command();
    let flag_ids: Vec<String> = Flags::augment_args(Command::new("flags"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let is_flag = |a: &&Arg| flag_ids.iter().any(|id| id == a.get_id().as_str());
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    out.push_str(&format!(
        "<!-- Generated from the command-line definition (crates/kubelet/src/config.rs `Flags`, \
         crates/krustlet/src/cli.rs); do not edit. Regenerate with: {REGENERATE} -->\n\n"
    ));
    out.push_str(
        "Settings come from, highest precedence first: command-line flags, `KRUSTLET_*` \
         environment variables, the YAML file given by `--config` (its keys are the flag names \
         in camelCase but for the kubelet's own `kubeAPIQPS` and `kubeAPIBurst`, as in the \
         *config key* column), and the defaults shown. A list flag \
         takes comma-separated values; in the config file it is a YAML list.\n\n\
         Example config file: [`deploy/systemd/krustlet.yaml`](../deploy/systemd/krustlet.yaml).\n\n",
    );
    out.push_str("## Node agent: `krustlet [FLAGS]`\n\n");
    out.push_str(
        "Runs the node: joins the cluster (TLS bootstrap if needed), registers the Node and runs \
         the pods scheduled to it. These flags are also accepted by `krustlet standalone`.\n\n",
    );
    let node_flags: Vec<&Arg> = cli.get_arguments().filter(is_flag).collect();
    table(&mut out, &node_flags, true);
    out.push_str("## Every command\n\n");
    let global: Vec<&Arg> = cli
        .get_arguments()
        .filter(|a| {
            !is_flag(a) && a.get_long().is_some() && a.get_id() != "help" && a.get_id() != "version"
        })
        .collect();
    table(&mut out, &global, false);
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.push_str(&format!("## `krustlet {}`\n\n", sub.get_name()));
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        out.push_str(&format!("{}\n\n", cell(&about)));
        positionals(&mut out, sub);
        // A subcommand with the node agent's flags has all of them (they are flattened in).
        let node_agent = sub.get_arguments().any(|a| a.get_id() == "max_pods");
        let own: Vec<&Arg> = sub
            .get_arguments()
            .filter(|a| !(node_agent && is_flag(a)))
            .filter(|a| !a.is_global_set() && a.get_long().is_some() && a.get_id() != "help")
            .collect();
        if !own.is_empty() {
            table(&mut out, &own, false);
        }
        if node_agent {
            out.push_str(
                "Plus every node agent flag above (`--data-dir`, `--node-name`, ...).\n\n",
            );
        }
    }
    out.trim_end().to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of this checkout: from the `CARGO_MANIFEST_DIR` that `cargo test` sets at run
    /// time, since the compile-time one goes stale when a target dir serves another checkout.
    fn repo_file(path: &str) -> std::path::PathBuf {
        let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        crate_dir.join("../..").join(path)
    }

    #[test]
    fn flag_names_become_camel_case_keys() {
        assert_eq!(camel("max-pods"), "maxPods");
        assert_eq!(
            camel("node-status-update-frequency"),
            "nodeStatusUpdateFrequency"
        );
    }

    #[test]
    fn configuration_reference_is_up_to_date() {
        let path = repo_file("docs/configuration.md");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = configuration_reference();
        assert!(
            current == generated,
            "docs/configuration.md is stale: run `{REGENERATE}`"
        );
    }

    #[test]
    fn the_example_config_file_is_valid() {
        let path = repo_file("deploy/systemd/krustlet.yaml");
        let flags = Flags {
            config: Some(path),
            ..Default::default()
        };
        let config = flags
            .merge_config_file()
            .and_then(Flags::resolve)
            .expect("deploy/systemd/krustlet.yaml is a valid config file");
        assert_eq!(config.node_name, "wasm-node-1");
        assert_eq!(config.max_pods, 110);
    }

    #[test]
    fn every_flag_is_in_the_reference() {
        let reference = configuration_reference();
        for arg in Flags::augment_args(Command::new("flags")).get_arguments() {
            let long = arg.get_long().expect("every setting is a long flag");
            assert!(reference.contains(&format!("--{long}")), "--{long} missing");
        }
        assert!(reference.contains("`maxPods`"));
        assert!(reference.contains("`kubeAPIQPS`"), "the kubelet's own key");
        assert!(reference.contains("`KRUSTLET_MAX_PODS`"));
        assert!(reference.contains("`110`"));
    }
}
