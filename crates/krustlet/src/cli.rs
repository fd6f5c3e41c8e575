//! The command line: kubelet-style flags for the node agent.

use clap::Parser;
use kubelet::config::Flags;

/// A Kubernetes kubelet that runs WebAssembly workloads.
///
/// Without a subcommand it runs the node agent. Settings come from, highest precedence first: command-line flags, KRUSTLET_* environment
/// variables, the YAML file given by --config (keys are the flag names in camelCase), and the
/// defaults shown.
#[derive(Debug, Parser)]
#[command(
    name = "krustlet",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do instead of running the node agent.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Node agent settings.
    #[command(flatten)]
    pub flags: Flags,

    /// Log filter, as RUST_LOG (e.g. info, kubelet=debug).
    #[arg(
        long,
        global = true,
        env = "KRUSTLET_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log: String,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Publish a wasm module or component to an OCI registry (CNCF Wasm artifact layout) and
    /// print its digest. Registries on loopback are reached over plain HTTP.
    Push {
        /// The .wasm file.
        file: std::path::PathBuf,
        /// Where to push it, e.g. $REGISTRY/hello:v1 after `./dev up`, or registry.example.com/me/hello:v1.
        reference: String,
        /// Registry user (the password comes from KRUSTLET_REGISTRY_PASSWORD).
        #[arg(long, env = "KRUSTLET_REGISTRY_USER")]
        username: Option<String>,
        /// Also sign the pushed digest with this cosign private key (`cosign
        /// generate-key-pair`'s cosign.key; its password comes from COSIGN_PASSWORD, empty
        /// when unset), stored in cosign's sha256-<digest>.sig tag layout.
        #[arg(long, value_name = "KEY")]
        sign: Option<std::path::PathBuf>,
    },
    /// Explain what a node with this image policy decides for IMAGE: the digest the
    /// reference resolves to, the rule that matches and whether a trusted key or keyless
    /// identity signed it. Exits 1 when the image would be refused. Sign images with `krustlet
    /// push --sign cosign.key` or `cosign sign` (see docs/signing.md).
    Verify {
        /// The image reference, e.g. registry.example.com/team/app:v1.
        image: String,
        /// The policy file (as --image-policy-file).
        #[arg(long, value_name = "FILE")]
        policy: std::path::PathBuf,
        /// The namespace of the pod that would run it.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// A registry reached over plain HTTP (loopback always is); repeatable.
        #[arg(long, value_name = "HOST[:PORT]")]
        insecure_registry: Vec<String>,
        /// Registry user (the password comes from KRUSTLET_REGISTRY_PASSWORD).
        #[arg(long, env = "KRUSTLET_REGISTRY_USER")]
        username: Option<String>,
    },
    /// Run static pods from a directory of pod manifests, without an API server. Files (YAML
    /// or JSON, one Pod each; names starting with "." are ignored) are picked up when added,
    /// changed or removed. See the pods' state with `krustlet pods`, their output with
    /// `krustlet logs`.
    Standalone {
        /// Node settings (--manifests is required here) (--data-dir, --node-name and the others of the node agent).
        #[command(flatten)]
        flags: Box<Flags>,
    },
    /// Print generated documentation (`config`: docs/configuration.md).
    #[command(hide = true)]
    Docs {
        /// Which document.
        #[arg(value_parser = ["config"])]
        topic: String,
    },
    /// List the static pods a `krustlet standalone` with this --data-dir runs.
    Pods {
        /// The data dir of the standalone Krustlet. [default: ~/.krustlet]
        #[arg(long, env = "KRUSTLET_DATA_DIR", value_name = "DIR")]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Print the logs of a container of a static pod (as `kubectl logs`).
    Logs {
        /// The pod, as `krustlet pods` names it (`<name>-<node>`).
        pod: String,
        /// The container; may be left out if the pod has one.
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Keep streaming until the container's run ends.
        #[arg(short = 'f', long)]
        follow: bool,
        /// The log of the run before the current one.
        #[arg(short = 'p', long)]
        previous: bool,
        /// The pod's namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The data dir of the standalone Krustlet. [default: ~/.krustlet]
        #[arg(long, env = "KRUSTLET_DATA_DIR", value_name = "DIR")]
        data_dir: Option<std::path::PathBuf>,
    },
}

impl Cli {
    /// Parses the command line; a usage error becomes one line naming the problem.
    pub fn parse_or_exit() -> Self {
        match Self::try_parse() {
            Ok(cli) => cli,
            Err(error) => {
                use clap::error::ErrorKind;
                if matches!(
                    error.kind(),
                    ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                ) {
                    let _ = error.print();
                    std::process::exit(0);
                }
                let rendered = error.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                eprintln!(
                    "krustlet: {} (see krustlet --help)",
                    first.trim_start_matches("error: ")
                );
                std::process::exit(2);
            }
        }
    }
}
