//! `vigil policy import`: the declared graph from Kubernetes, Cilium and Istio policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Config;

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Turn NetworkPolicy, CiliumNetworkPolicy and Istio AuthorizationPolicy objects (and the
    /// manifests whose labels their selectors match: Pods, Deployments, …) into a policy graph
    /// for `detect.allowlist_file`. Files or directories of `*.yaml`/`*.yml`; what could not
    /// be expressed is listed on stderr.
    Import {
        /// YAML files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Write the graph here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The SPIFFE trust domain of the mesh's identities.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
}

/// The YAML files at `paths` (directories: their `*.yaml`/`*.yml`, sorted), read.
pub fn read_yaml(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    files
        .iter()
        .map(|f| {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            Ok((f.display().to_string(), text))
        })
        .collect()
}

/// Import the policies at `paths` into a graph (notes logged).
pub fn import(
    paths: &[PathBuf],
    trust_domain: &str,
) -> anyhow::Result<vigil_detect::policy::Imported> {
    let files = read_yaml(paths)?;
    let got = vigil_detect::policy::import(&files, trust_domain)?;
    for n in &got.notes {
        tracing::warn!(note = %n, "policy import: left out");
    }
    Ok(got)
}

pub fn run(_cfg: &Config, args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Import {
            paths,
            out,
            trust_domain,
        } => {
            let got = import(&paths, &trust_domain)?;
            let mut text = format!(
                "# Imported by `vigil policy import` from {} policies ({} workloads): {}\n",
                got.policies.len(),
                got.workloads,
                got.policies.join(", ")
            );
            for n in &got.notes {
                text.push_str(&format!("# left out: {n}\n"));
            }
            text.push_str(&toml::to_string(&got.graph)?);
            match out {
                Some(o) => write(&o, &text)?,
                None => print!("{text}"),
            }
            eprintln!(
                "{} edges from {} policies over {} workloads; {} note(s)",
                got.graph.edges.len(),
                got.policies.len(),
                got.workloads,
                got.notes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    vigil_store::write_durably(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
