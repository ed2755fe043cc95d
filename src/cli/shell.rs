//! `haul completions SHELL` and `haul man [--dir DIR]`: generated from the clap definition of
//! the command line ([`super::Cli`]), so that they always list the commands and flags haul has.

use clap::CommandFactory;
use std::path::Path;

use super::Cli;
use haul::runner::exit;
use haul::Error;

/// Prints the completion script of `shell` for haul on stdout.
pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "haul", &mut out);
    exit::OK
}

/// Prints haul's man page on stdout, or with `dir` writes one page per command there
/// (`haul.1`, `haul-run.1`, `haul-images-ls.1`, ...).
pub fn man(dir: Option<&Path>) -> Result<u8, Error> {
    let cmd = Cli::command();
    let out = |context: String| move |source| Error::Output { context, source };
    match dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut buf)
                .map_err(out("render the man page".into()))?;
            use std::io::Write;
            // A closed stdout (`haul man | head`) is not an error worth reporting.
            let _ = std::io::stdout().lock().write_all(&buf);
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(out(format!("create {}", dir.display())))?;
            clap_mangen::generate_to(cmd, dir)
                .map_err(out(format!("write the man pages into {}", dir.display())))?;
        }
    }
    Ok(exit::OK)
}
