//! `haul doctor [--json]`: prints what [`haul::doctor::diagnose`] found.

use super::{out, print_doc};
use haul::runner::exit;
use haul::Error;

/// Runs every check and prints them; exit 0 when everything haul needs is there, 1 otherwise.
pub fn run(json: bool) -> Result<u8, Error> {
    let d = haul::doctor::diagnose();
    if json {
        print_doc("doctor", &d)?;
    } else {
        out(&format!(
            "haul {} on Linux {} (each feature tried for real)",
            d.haul_version, d.kernel
        ));
        for c in &d.checks {
            let state = if c.ok { "ok" } else { "MISSING" };
            let need = if c.needed { "needed" } else { "optional" };
            out(&format!("{state:<8} {:<23} {need:<9} {}", c.name, c.detail));
            if !c.ok {
                out(&format!("{:42}-> {}", "", c.consequence));
            }
        }
        out(&format!("pre-copy dirty tracker (auto): {}", d.tracker));
        let missing = d.missing_needed();
        if missing.is_empty() {
            out("everything haul needs is here");
        } else {
            let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
            out(&format!(
                "haul cannot work here: missing {}",
                names.join(", ")
            ));
        }
    }
    Ok(if d.ok { exit::OK } else { exit::FAILED })
}
