//! `vigil api-key`: a new random API key, printed once, and the configuration entry holding
//! its hash.

use anyhow::Context;
use vigil_query::api::auth::Role;

/// `vigil api-key`: a new random API key, printed once, and the configuration entry holding
/// its hash.
#[derive(clap::Args)]
pub struct ApiKeyArgs {
    /// The key's name (it is who the audit log says called).
    #[arg(long)]
    name: String,
    /// A role: reader, analyst, ingestor or admin (repeat for several).
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
}

pub fn api_key(args: ApiKeyArgs) -> anyhow::Result<std::process::ExitCode> {
    for r in &args.roles {
        Role::parse(r)
            .with_context(|| format!("unknown role {r:?} (reader, analyst, ingestor, admin)"))?;
    }
    anyhow::ensure!(
        !args.name.is_empty()
            && args
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "the name: letters, digits, - _ ."
    );
    let mut raw = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
    let key = format!("vk_{}", hex::encode(raw));
    let hash = hex::encode(vigil_query::api::auth::hash_key(&key));
    println!("{key}");
    eprintln!(
        "Keep the key (shown once). Add to the configuration:\n\n[[api.keys]]\nname = {:?}\nsha256 = \"{hash}\"\nroles = {:?}\n\nThen: curl -H \"Authorization: Bearer <key>\" http://127.0.0.1:8080/v1/alerts",
        args.name, args.roles
    );
    Ok(std::process::ExitCode::SUCCESS)
}
