//! `hailan-ingest zk …`: trusted setup and third-party export (ZK.md).
//!
//! Key directory layout (written by `zk setup`, read by ingest, the gateway
//! and `zk export`):
//!
//! - `reading.pk`, `window.pk`: proving keys (the gateway's; public, not secret)
//! - `reading.vk`, `window.vk`: verifying keys (ingest's and the clinician's)
//! - `keys.json`: manifest — statement, key id (hex SHA-256 of the verifying
//!   key), origin (`setup` or `dev` with its seed), constraint count, files.

use anyhow::{Context, bail};
use hailan_proto::envelope::ProofKind;
use hailan_proto::zk::keys::{kind_name, public_input_count};
use hailan_proto::zk::snarkjs::SnarkjsExport;
use hailan_proto::zk::{KeyOrigin, ProofBundle, ProvingKey, VerifyingKey};
use std::fs;
use std::path::{Path, PathBuf};

/// The two statement shapes, in file-name order.
pub const KINDS: [ProofKind; 2] = [ProofKind::Reading, ProofKind::Window];

/// The `hailan-ingest zk …` subcommands: trusted setup, snarkjs export of a
/// proof bundle, and native verification of one.
#[derive(Debug, clap::Subcommand)]
pub enum ZkCommand {
    /// Generate the proving and verifying keys of both statements.
    ///
    /// Without --dev-seed the randomness comes from the OS and is dropped
    /// when the command ends (one-party setup: whoever runs it must be
    /// trusted to have dropped it; see ZK.md for the multi-party path).
    Setup {
        /// Directory to write reading.{pk,vk}, window.{pk,vk} and keys.json into.
        #[arg(long)]
        out: PathBuf,
        /// Reproducible DEVELOPMENT keys from this seed. Anyone with the seed
        /// can forge proofs; production configuration refuses these keys.
        #[arg(long)]
        dev_seed: Option<u64>,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Write a stored proof as snarkjs groth16 JSON (vk.json, proof.json,
    /// public.json) for `snarkjs groth16 verify vk.json public.json proof.json`.
    Export {
        /// The proof bundle to export and where its verifying key is.
        #[command(flatten)]
        bundle: BundleArgs,
        /// Directory to write vk.json, proof.json and public.json into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a proof bundle natively (e.g. one made by `hailan-gateway
    /// selftest` on another machine). Exits 1 when it does not verify.
    Verify {
        /// The proof bundle to verify and where its verifying key is.
        #[command(flatten)]
        bundle: BundleArgs,
    },
}

/// A proof bundle and the verifying key to check it with.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// Proof bundle JSON: {"statement", "key_id", "proof" (hex), "public_inputs" (decimal)}.
    #[arg(long)]
    bundle: PathBuf,
    /// Key directory; the verifying key named by the bundle's key id is used.
    #[arg(long, conflicts_with = "vk")]
    keys: Option<PathBuf>,
    /// A verifying key file instead of a key directory.
    #[arg(long)]
    vk: Option<PathBuf>,
}

/// Runs one `zk` subcommand.
pub fn run(cmd: ZkCommand) -> anyhow::Result<()> {
    match cmd {
        ZkCommand::Setup {
            out,
            dev_seed,
            force,
        } => setup(&out, dev_seed, force),
        ZkCommand::Export { bundle, out } => export(&bundle, &out),
        ZkCommand::Verify { bundle } => verify(&bundle),
    }
}

fn pk_path(dir: &Path, kind: ProofKind) -> PathBuf {
    dir.join(format!("{}.pk", kind_name(kind)))
}

fn vk_path(dir: &Path, kind: ProofKind) -> PathBuf {
    dir.join(format!("{}.vk", kind_name(kind)))
}

/// `zk setup`: write `reading.{pk,vk}`, `window.{pk,vk}` and `keys.json` into
/// `out` — from OS randomness, or reproducible development keys from
/// `dev_seed`. Refuses to replace existing key files unless `force`.
pub fn setup(out: &Path, dev_seed: Option<u64>, force: bool) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let manifest_path = out.join("keys.json");
    if !force {
        for p in KINDS
            .iter()
            .flat_map(|k| [pk_path(out, *k), vk_path(out, *k)])
            .chain([manifest_path.clone()])
        {
            if p.exists() {
                bail!(
                    "{} exists; pass --force to replace the keys (every proof made with them stops verifying)",
                    p.display()
                );
            }
        }
    }
    let mut entries = Vec::new();
    for kind in KINDS {
        let pk = match dev_seed {
            Some(seed) => ProvingKey::dev_setup(kind, seed)?,
            None => ProvingKey::setup(kind, &mut rand::rngs::OsRng)?,
        };
        let vk = pk.verifying_key();
        fs::write(pk_path(out, kind), pk.to_bytes())
            .with_context(|| format!("writing {}", pk_path(out, kind).display()))?;
        fs::write(vk_path(out, kind), vk.to_bytes())
            .with_context(|| format!("writing {}", vk_path(out, kind).display()))?;
        let (origin, seed) = match pk.origin() {
            KeyOrigin::Setup => ("setup", None),
            KeyOrigin::Dev { seed } => ("dev", Some(seed)),
        };
        println!("{} key {} ({origin})", kind_name(kind), pk.id());
        entries.push(serde_json::json!({
            "statement": kind_name(kind),
            "key_id": pk.id().to_string(),
            "origin": origin,
            "dev_seed": seed,
            "constraints": pk.constraints(),
            "public_inputs": public_input_count(kind),
            "proving_key": format!("{}.pk", kind_name(kind)),
            "verifying_key": format!("{}.vk", kind_name(kind)),
        }));
    }
    let mut manifest = serde_json::json!({ "format": "hailan-zk-keys/1", "keys": entries });
    if let Some(seed) = dev_seed {
        manifest["warning"] = serde_json::json!(format!(
            "DEVELOPMENT KEYS from public seed {seed}: anyone can forge proofs; production ingest refuses them"
        ));
        eprintln!("warning: development keys (seed {seed}); never deploy them");
    }
    fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Reads one verifying key file.
pub fn read_verifying_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    VerifyingKey::from_bytes(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Reads the verifying keys of a key directory (what ingest loads; it then
/// builds a `Verifier` refusing development keys in production).
pub fn load_verifying_keys(dir: &Path) -> anyhow::Result<Vec<VerifyingKey>> {
    KINDS
        .iter()
        .map(|k| read_verifying_key(&vk_path(dir, *k)))
        .collect()
}

/// Reads a proof bundle and the verifying key it names (from `--vk`, or by
/// its key id from `--keys`); warns when that key is a development key.
fn bundle_and_key(args: &BundleArgs) -> anyhow::Result<(ProofBundle, VerifyingKey)> {
    let (bundle_path, keys, vk) = (&args.bundle, args.keys.as_deref(), args.vk.as_deref());
    let raw =
        fs::read(bundle_path).with_context(|| format!("reading {}", bundle_path.display()))?;
    let bundle: ProofBundle = serde_json::from_slice(&raw)
        .with_context(|| format!("parsing the proof bundle {}", bundle_path.display()))?;
    let vk = match (keys, vk) {
        (_, Some(p)) => read_verifying_key(p)?,
        (Some(dir), None) => load_verifying_keys(dir)?
            .into_iter()
            .find(|k| k.id().to_string() == bundle.key_id)
            .with_context(|| {
                format!(
                    "no verifying key with id {} in {}",
                    bundle.key_id,
                    dir.display()
                )
            })?,
        (None, None) => bail!("pass --keys DIR or --vk FILE"),
    };
    if let KeyOrigin::Dev { seed } = vk.origin() {
        eprintln!("warning: the key is a development key (seed {seed}): its proofs prove nothing");
    }
    Ok((bundle, vk))
}

fn verify(args: &BundleArgs) -> anyhow::Result<()> {
    let (bundle, vk) = bundle_and_key(args)?;
    bundle
        .verify(&vk)
        .with_context(|| format!("{} does not verify", args.bundle.display()))?;
    println!(
        "verified: {} proof with key {} ({} public inputs)",
        bundle.statement,
        vk.id(),
        bundle.public_inputs.len()
    );
    Ok(())
}

fn export(args: &BundleArgs, out: &Path) -> anyhow::Result<()> {
    let (bundle, vk) = bundle_and_key(args)?;
    let export =
        SnarkjsExport::new(&vk, &bundle).context("the bundle does not verify against the key")?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    fs::write(out.join("vk.json"), serde_json::to_vec_pretty(&export.vk)?)?;
    fs::write(
        out.join("proof.json"),
        serde_json::to_vec_pretty(&export.proof)?,
    )?;
    fs::write(
        out.join("public.json"),
        serde_json::to_vec_pretty(&export.public)?,
    )?;
    println!(
        "wrote {}/{{vk,proof,public}}.json ({} public inputs, key {})",
        out.display(),
        export.public.len(),
        vk.id()
    );
    Ok(())
}
