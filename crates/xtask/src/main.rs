//! `cargo run -p xtask -- assets DIR`: writes the man pages (`DIR/man/bootstage.1` and one
//! per subcommand) and shell completions (`DIR/completions/`) from the CLI definition in
//! `src/cli.rs`, so they can never disagree with the binary. The Debian package ships them
//! (scripts/build-deb.sh).

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [task, dir] = args.as_slice() else {
        return Err("usage: xtask assets DIR".into());
    };
    if task != "assets" {
        return Err(format!("unknown task {task:?}; known: assets").into());
    }
    let dir = PathBuf::from(dir);
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = bootstage::cli::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "bootstage", &completions)?;
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}
