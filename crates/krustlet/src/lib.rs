//! The `krustlet` command: a Kubernetes kubelet that runs WebAssembly.
//!
//! A library so that the end-to-end tests can build the very same command as their own binary.

pub mod cli;
pub mod docs;
pub mod heap;
pub mod standalone;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use kubelet::Kubelet;
use kubelet::node::shutdown;

/// The whole command: parse the command line, run, and map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse_or_exit();
    // kube's client logs every failed connection as an ERROR of its own; Krustlet says what
    // failed and what to check, so those are hidden unless asked for.
    let directives = if cli.log.contains("kube_client") {
        cli.log.clone()
    } else {
        format!("{},kube_client::client::builder=off", cli.log)
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Every runtime thread starts in the kubelet's network namespace (see `return_home`).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(kubelet::network::netns::return_home)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("krustlet: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("krustlet: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let (flags, standalone) = match cli.command {
        Some(cli::Command::Push {
            file,
            reference,
            username,
            sign,
        }) => return push(&file, &reference, username, sign.as_deref()).await,
        Some(cli::Command::Pods { data_dir }) => return standalone::pods(data_dir),
        Some(cli::Command::Verify {
            image,
            policy,
            namespace,
            insecure_registry,
            username,
        }) => return verify(&image, &policy, &namespace, insecure_registry, username).await,
        Some(cli::Command::Docs { .. }) => {
            print!("{}", docs::configuration_reference());
            return Ok(());
        }
        Some(cli::Command::Logs {
            pod,
            container,
            follow,
            previous,
            namespace,
            data_dir,
        }) => {
            return standalone::logs(&pod, container, &namespace, follow, previous, data_dir).await;
        }
        Some(cli::Command::Standalone { flags }) => (*flags, true),
        None => (cli.flags, false),
    };
    let config = flags.merge_config_file()?.resolve()?;
    let manifests = match (standalone, &config.manifests) {
        (true, None) => anyhow::bail!(
            "krustlet standalone needs --manifests DIR (a directory of pod manifests)"
        ),
        (true, Some(dir)) => Some(dir.clone()),
        (false, _) => None,
    };
    // Installed before anything else, so a SIGTERM at any point shuts down gracefully.
    let signals = shutdown::signalled().context("installing signal handlers")?;
    let shutdown = async {
        let signal = signals.await;
        tracing::info!(signal, "received shutdown signal");
    };
    // A node from here on (standalone or connected): it runs long and frees a lot.
    heap::start();
    let engine = krustlet_wasi::WasmEngine::new().context("starting the wasm engine")?;
    // The key lives beside, not inside, the cache directory it authenticates.
    let key = krustlet_wasi::CacheKey::load_or_create(&config.data_path("compile-cache.key"))
        .context("the compile cache key")?;
    let runtime = Arc::new(krustlet_wasi::WasiRuntime::with_options(
        engine,
        krustlet_wasi::WasiOptions {
            disk: Some(krustlet_wasi::DiskCache {
                dir: config.data_path("images/compiled"),
                key,
            }),
            limits: krustlet_wasi::CacheLimits {
                memory_bytes: config.compile.cache_memory_bytes,
                max_module_bytes: config.pull_limits.max_module_bytes,
            },
            concurrency: config.compile.concurrency,
            baseline_first_start: config.compile.first_start
                == kubelet::config::FirstStartCompiler::Winch,
        },
    ));
    if let Some(dir) = &config.manifests
        && !dir.is_dir()
    {
        anyhow::bail!(
            "--manifests {}: not a directory (create it and put pod manifests in it)",
            dir.display()
        );
    }
    if let Some(manifests) = manifests {
        return kubelet::standalone::run(config, manifests, runtime, shutdown)
            .await
            .context("standalone");
    }
    Kubelet::new(config, runtime)
        .run(shutdown)
        .await
        .context("kubelet")
}

async fn push(
    file: &std::path::Path,
    reference: &str,
    username: Option<String>,
    sign: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use kubelet::image::signature::sign::{SigningKey, sign_and_push};
    // The key is opened before anything is pushed, so a wrong password pushes nothing.
    let key = match sign {
        Some(path) => {
            let password = std::env::var("COSIGN_PASSWORD").unwrap_or_default();
            Some(SigningKey::load(path, password.as_bytes())?)
        }
        None => None,
    };
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if krustlet_wasi::ProgramKind::detect(&wasm).is_none() {
        anyhow::bail!(
            "{} is not a WebAssembly module or component",
            file.display()
        );
    }
    let credentials = username.map(|username| kubelet::image::Credentials {
        username,
        password: std::env::var("KRUSTLET_REGISTRY_PASSWORD").unwrap_or_default(),
    });
    let digest = kubelet::image::push_wasm(reference, wasm, credentials.as_ref()).await?;
    if let Some(key) = &key {
        let tag = sign_and_push(reference, &digest, key, credentials.as_ref()).await?;
        eprintln!("signed {digest}: {tag}");
    }
    println!("{digest}");
    Ok(())
}

/// `krustlet verify`: prints the policy decision for `image`; an error when it is refused.
async fn verify(
    image: &str,
    policy: &std::path::Path,
    namespace: &str,
    insecure: Vec<String>,
    username: Option<String>,
) -> anyhow::Result<()> {
    use kubelet::image::signature::{Signatures, policy::Policy};
    let loaded = Policy::load(policy)?;
    let credentials = username.map(|username| kubelet::image::Credentials {
        username,
        password: std::env::var("KRUSTLET_REGISTRY_PASSWORD").unwrap_or_default(),
    });
    let digest = kubelet::image::resolve_digest(image, credentials.as_ref(), &insecure).await?;
    println!("image:     {image}");
    println!("digest:    {digest} (the manifest a node would run)");
    println!("namespace: {namespace}");
    let signatures = Signatures::fixed(loaded, insecure);
    match signatures
        .check(image, &digest, namespace, credentials.as_ref())
        .await
    {
        Ok(allowed) => {
            println!("decision:  {allowed}");
            Ok(())
        }
        Err(error) => {
            println!("decision:  refused ({})", error.reason());
            Err(error.into())
        }
    }
}
