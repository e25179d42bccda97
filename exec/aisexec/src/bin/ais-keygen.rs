//! `ais-keygen`: writes a new shared key for `secauth` (128 random bytes, mode 0400).
//!
//! `ais-keygen [-k FILE]` (default /etc/ais/authkey). Copy the file to every node.

use std::path::PathBuf;
use std::process::ExitCode;

const KEY_BYTES: usize = 128;

fn main() -> ExitCode {
    let mut path = PathBuf::from(aisexec::config::DEFAULT_KEYFILE);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-k" | "--keyfile" => match args.next() {
                Some(p) => path = PathBuf::from(p),
                None => return usage(),
            },
            "-h" | "--help" => {
                println!("usage: ais-keygen [-k FILE]   (default {})", path.display());
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("ais-keygen: {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    match aisexec::crypto::generate_key_file(&path, KEY_BYTES) {
        Ok(()) => {
            println!(
                "wrote {KEY_BYTES}-byte key to {} (mode 0400); copy it to every node",
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ais-keygen: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: ais-keygen [-k FILE]");
    ExitCode::from(2)
}
