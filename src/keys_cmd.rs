//! `vigil keys`: the checkpoint signing keys of a store — show the public registry (what an
//! auditor pins), or rotate to a new key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vigil_store::checkpoint::KeyRing;

use crate::config::{Config, nonempty};

#[derive(clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    action: KeysAction,
    /// Store directory (overrides `store.data_dir`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum KeysAction {
    /// Print the public key registry (`<verifier key> <valid from ms> <valid until ms|->`),
    /// generating the first key if there is none.
    Show,
    /// Start signing with a new key; the current keys keep signing for `--overlap-secs`, then
    /// stop. Run while `vigil serve` is stopped (it reads the keys at start); while it runs,
    /// an admin rotates through the API (`POST /v1/keys/rotate`).
    Rotate {
        #[arg(long, default_value_t = 3600)]
        overlap_secs: u64,
    },
}

pub fn run(cfg: &Config, args: KeysArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.unwrap_or_else(|| cfg.store.data_dir.clone());
    let mut ring = KeyRing::open(&dir, nonempty(&cfg.checkpoint.signing_key_file))
        .with_context(|| format!("opening the keys of {}", dir.display()))?;
    if let KeysAction::Rotate { overlap_secs } = args.action {
        let vkey = ring.rotate((overlap_secs * 1000) as i64)?;
        eprintln!("vigil: new signing key {vkey}");
    }
    print!("{}", ring.registry.format());
    Ok(ExitCode::SUCCESS)
}
