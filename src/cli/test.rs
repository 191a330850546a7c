//! `test`: policy tests against a directory, no server.

use super::*;

pub(super) fn run_tests(args: TestArgs) -> Result<u8> {
    use crate::local::policytest;
    let loaded = load_once(&args.dir)?;
    let broken_input = !loaded.scanned.problems.is_empty() || loaded.compiled.outcomes.iter().any(|o| o.outcome != Outcome::Accepted);
    if broken_input {
        for line in report(&loaded) {
            eprintln!("{line}");
        }
        eprintln!("error: the policies do not all load; fix them before testing them");
        return Ok(2);
    }
    let mut files = Vec::new();
    let roots = if args.paths.is_empty() { vec![args.dir.dir.clone()] } else { args.paths.clone() };
    for root in roots {
        if root.is_dir() {
            files.extend(policytest::find_files(&root));
        } else if root.is_file() {
            files.push(root);
        } else {
            bail!("{:?} is not a test file or directory", root.display().to_string());
        }
    }
    if files.is_empty() {
        eprintln!("error: no *.test.yaml files found");
        return Ok(2);
    }
    let (engine, signers) = policytest::engine(loaded.compiled.config.clone(), &loaded.rings).map_err(|e| anyhow!(e))?;
    let now = unix_now();
    let mut results = Vec::new();
    for path in &files {
        let file = match policytest::read_file(path) {
            Ok(f) => f,
            Err(policytest::Broken(why)) => {
                eprintln!("error: {why}");
                return Ok(2);
            }
        };
        let shown = path.display().to_string();
        for case in &file.spec.cases {
            results.push(policytest::run_case(&engine, &signers, &shown, case, now));
        }
    }
    let failed: Vec<&policytest::CaseResult> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    for r in &failed {
        outln!("FAIL {}: {}", r.file, r.name);
        for f in &r.failures {
            outln!("  {f}");
        }
        outln!("  decided: {}", r.explanation);
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, policytest::junit(&results)).with_context(|| format!("writing {}", path.display()))?;
    }
    outln!("{} passed, {} failed", results.len() - failed.len(), failed.len());
    Ok(u8::from(!failed.is_empty()))
}
