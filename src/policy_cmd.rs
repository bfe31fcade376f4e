//! `vigil policy import`: the declared graph from Kubernetes, Cilium and Istio policies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::services::policy::import;

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Turn NetworkPolicy, CiliumNetworkPolicy and Istio AuthorizationPolicy objects (and the
    /// manifests whose labels their selectors match: Pods, Deployments, …) into a policy graph
    /// for `detect.allowlist_file`. Files or directories of `*.yaml`/`*.yml`, and Kubernetes
    /// audit logs (`*.json`/`*.jsonl`/`*.log`) whose workload events count as manifests; what
    /// could not be expressed is listed on stderr.
    Import {
        /// YAML files, audit logs, or directories of them.
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

pub fn run(_cfg: &Config, args: PolicyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PolicyCommand::Import {
            paths,
            out,
            trust_domain,
        } => {
            let got = import(&paths, &trust_domain, None)?;
            let mut text = format!(
                "# Imported by `vigil policy import` from {} policies ({} workloads, {} audit events about them): {}\n",
                got.policies.len(),
                got.workloads,
                got.audit_changes,
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
