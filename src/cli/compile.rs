//! `compile`: a directory into a gateway config.

use super::*;

pub(super) fn run_compile(args: CompileArgs) -> Result<u8> {
    let loaded = load_once(&args.dir)?;
    for line in report(&loaded) {
        eprintln!("{line}");
    }
    let rejected = loaded.compiled.outcomes.iter().any(|o| o.outcome != Outcome::Accepted);
    if rejected || !loaded.scanned.problems.is_empty() {
        // A config without the broken resources would drop them from the gateway it is given to.
        eprintln!("error: not compiled: fix the resources above (nothing was written)");
        return Ok(2);
    }
    let config = &loaded.compiled.config;
    let bytes = if args.gzip { config.to_gzip() } else { config.to_json() };
    match &args.out {
        Some(path) => std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?,
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&bytes)?;
        }
    }
    Ok(0)
}
