//! The layer rule of the workspace, checked on `cargo metadata`:
//! service ← arch ← qc ← business. A normal dependency may only point down the table; the
//! testkit is a dev-dependency of library crates; nothing below the business layer uses
//! the demo. The demo environment (`im-vendor-sim`) depends on the service layer only and
//! is a dev-dependency of the library layers below the demo. The demo is a layer like the
//! others: no exemption. `../shared/tools/check-layers` checks the same rule independently.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Layer number of each library crate; a normal dependency must point to a lower number.
pub const LAYERS: &[(&str, u8)] = &[
    ("im-service", 0),
    ("im-arch", 1),
    ("im-archive", 1),
    ("im-qc", 2),
    ("im-business-demo", 3),
];

/// Crates that must exist.
pub const REQUIRED: &[&str] = &[
    "im-service",
    "im-arch",
    "im-archive",
    "im-qc",
    "im-business-demo",
    "im-testkit",
    "im-vendor-sim",
];

/// The test tier: may use any library crate, and is used only as a dev-dependency.
pub const TEST_TIER: &str = "im-testkit";

/// The business demo: nothing below it may depend on it.
pub const DEMO: &str = "im-business-demo";

/// The demo environment (the reference vendor server): used by the demo, the test tier and
/// the tooling; a dev-dependency only of the library layers below the demo.
pub const VENDOR_SIM: &str = "im-vendor-sim";

/// The only workspace crates [`VENDOR_SIM`] may depend on normally.
pub const VENDOR_SIM_DEPS: &[&str] = &["im-service"];

fn layer(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// Checks a `cargo metadata --no-deps --format-version 1` document; returns every violation.
pub fn check(metadata: &Value) -> Vec<String> {
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut problems: Vec<String> = REQUIRED
        .iter()
        .filter(|r| !names.contains(r))
        .map(|r| format!("missing crate {r}"))
        .collect();
    for pkg in &packages {
        let src = pkg["name"].as_str().unwrap_or_default();
        let manifest = pkg["manifest_path"].as_str().unwrap_or_default();
        // Tooling and cross-crate test/bench packages sit above every layer. The demo does
        // not: it is layer 3 and keeps the rule like every library crate.
        let free = src == "xtask" || manifest.contains("/tests/") || manifest.contains("/benches/");
        for dep in pkg["dependencies"].as_array().into_iter().flatten() {
            let dst = dep["name"].as_str().unwrap_or_default();
            if !names.contains(&dst) || dst == src {
                continue;
            }
            let dev = dep["kind"].as_str() == Some("dev");
            if dst == DEMO && !free {
                problems.push(format!(
                    "{src} -> {dst}: nothing below the business layer may use the demo"
                ));
            } else if dst == TEST_TIER && !dev && !free && src != TEST_TIER {
                problems.push(format!(
                    "{src} -> {dst}: the testkit is a dev-dependency only for library crates"
                ));
            } else if src == VENDOR_SIM && !dev && !VENDOR_SIM_DEPS.contains(&dst) {
                problems.push(format!(
                    "{src} -> {dst}: the demo environment depends on {} only",
                    VENDOR_SIM_DEPS.join(", ")
                ));
            } else if dst == VENDOR_SIM
                && !dev
                && layer(src).is_some_and(|l| l < layer(DEMO).unwrap_or(u8::MAX))
            {
                problems.push(format!(
                    "{src} -> {dst}: the demo environment is a dev-dependency only below the demo"
                ));
            } else if let (Some(ls), Some(ld)) = (layer(src), layer(dst))
                && !dev
                && ld >= ls
            {
                problems.push(format!(
                    "{src} (layer {ls}) -> {dst} (layer {ld}): points up or sideways"
                ));
            }
        }
    }
    problems
}

/// Reads the workspace's metadata through cargo.
pub fn workspace_metadata() -> Result<Value> {
    let out = Command::new(crate::cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(crate::project_root())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parsing cargo metadata")
}

/// `cargo xtask layers`: fails with the list of violations.
pub fn run() -> Result<()> {
    let meta = workspace_metadata()?;
    let problems = check(&meta);
    if problems.is_empty() {
        let n = meta["packages"].as_array().map_or(0, Vec::len);
        println!("layers: ok ({n} workspace crates)");
        Ok(())
    } else {
        for p in &problems {
            println!("{p}");
        }
        bail!("layers: {} problem(s)", problems.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pkg(name: &str, deps: &[(&str, Option<&str>)]) -> Value {
        let deps: Vec<Value> = deps
            .iter()
            .map(|(n, kind)| json!({ "name": n, "kind": kind }))
            .collect();
        json!({ "name": name, "manifest_path": format!("/w/crates/{name}/Cargo.toml"), "dependencies": deps })
    }

    fn good() -> Vec<Value> {
        vec![
            pkg(
                "im-service",
                &[("serde", None), ("im-testkit", Some("dev"))],
            ),
            pkg(
                "im-arch",
                &[("im-service", None), ("im-testkit", Some("dev"))],
            ),
            pkg("im-qc", &[("im-service", None), ("im-arch", None)]),
            pkg(
                "im-business-demo",
                &[
                    ("im-qc", None),
                    ("im-arch", None),
                    ("im-service", None),
                    ("im-vendor-sim", None),
                    ("im-testkit", Some("dev")),
                ],
            ),
            pkg(
                "im-testkit",
                &[
                    ("im-service", None),
                    ("im-arch", None),
                    ("im-vendor-sim", None),
                ],
            ),
            pkg("xtask", &[("im-business-demo", None)]),
            pkg(
                "im-archive",
                &[("im-service", None), ("im-arch", Some("dev"))],
            ),
            pkg(
                "im-vendor-sim",
                &[("im-service", None), ("im-testkit", Some("dev"))],
            ),
        ]
    }

    /// `good()` with the package called `name` replaced by `with`.
    fn replace(name: &str, with: Value) -> Vec<Value> {
        let mut pkgs = good();
        let i = pkgs
            .iter()
            .position(|p| p["name"] == name)
            .expect("a package of good()");
        pkgs[i] = with;
        pkgs
    }

    #[test]
    fn a_correct_graph_passes() {
        assert_eq!(check(&json!({ "packages": good() })), Vec::<String>::new());
    }

    #[test]
    fn arch_as_normal_dependency_of_service_fails() {
        let mut pkgs = good();
        pkgs[0] = pkg("im-service", &[("im-arch", None)]);
        let problems = check(&json!({ "packages": pkgs }));
        assert_eq!(
            problems,
            ["im-service (layer 0) -> im-arch (layer 1): points up or sideways"]
        );
    }

    #[test]
    fn upward_dev_dependency_is_allowed_but_sideways_normal_is_not() {
        let mut pkgs = good();
        pkgs[1] = pkg("im-arch", &[("im-service", None), ("im-qc", Some("dev"))]);
        assert!(check(&json!({ "packages": pkgs.clone() })).is_empty());
        pkgs[6] = pkg("im-archive", &[("im-arch", None)]);
        assert_eq!(check(&json!({ "packages": pkgs })).len(), 1);
    }

    #[test]
    fn testkit_as_normal_dependency_of_a_library_fails() {
        let mut pkgs = good();
        pkgs[2] = pkg("im-qc", &[("im-arch", None), ("im-testkit", None)]);
        let problems = check(&json!({ "packages": pkgs }));
        assert_eq!(
            problems,
            ["im-qc -> im-testkit: the testkit is a dev-dependency only for library crates"]
        );
    }

    #[test]
    fn the_demo_is_used_by_nobody_below_it() {
        let mut pkgs = good();
        pkgs[4] = pkg("im-testkit", &[("im-business-demo", Some("dev"))]);
        assert_eq!(check(&json!({ "packages": pkgs })).len(), 1);
    }

    #[test]
    fn the_demo_may_not_use_the_testkit_normally() {
        let pkgs = replace(
            "im-business-demo",
            pkg("im-business-demo", &[("im-qc", None), ("im-testkit", None)]),
        );
        assert_eq!(
            check(&json!({ "packages": pkgs })),
            [
                "im-business-demo -> im-testkit: the testkit is a dev-dependency only for library crates"
            ]
        );
    }

    #[test]
    fn the_demo_may_use_the_vendor_sim() {
        let pkgs = replace(
            "im-business-demo",
            pkg(
                "im-business-demo",
                &[("im-qc", None), ("im-vendor-sim", None)],
            ),
        );
        assert_eq!(check(&json!({ "packages": pkgs })), Vec::<String>::new());
    }

    #[test]
    fn the_vendor_sim_depends_on_the_service_layer_only() {
        let pkgs = replace(
            "im-vendor-sim",
            pkg("im-vendor-sim", &[("im-service", None), ("im-arch", None)]),
        );
        assert_eq!(
            check(&json!({ "packages": pkgs })),
            ["im-vendor-sim -> im-arch: the demo environment depends on im-service only"]
        );
        // A dev-dependency (its tests use the testkit's helpers) is allowed.
        let pkgs = replace(
            "im-vendor-sim",
            pkg(
                "im-vendor-sim",
                &[("im-service", None), ("im-arch", Some("dev"))],
            ),
        );
        assert_eq!(check(&json!({ "packages": pkgs })), Vec::<String>::new());
    }

    #[test]
    fn libraries_below_the_demo_use_the_vendor_sim_as_a_dev_dependency_only() {
        let normal = replace(
            "im-arch",
            pkg("im-arch", &[("im-service", None), ("im-vendor-sim", None)]),
        );
        assert_eq!(
            check(&json!({ "packages": normal })),
            [
                "im-arch -> im-vendor-sim: the demo environment is a dev-dependency only below the demo"
            ]
        );
        let dev = replace(
            "im-arch",
            pkg(
                "im-arch",
                &[("im-service", None), ("im-vendor-sim", Some("dev"))],
            ),
        );
        assert_eq!(check(&json!({ "packages": dev })), Vec::<String>::new());
        // The service layer below it too.
        let service = replace("im-service", pkg("im-service", &[("im-vendor-sim", None)]));
        assert_eq!(check(&json!({ "packages": service })).len(), 1);
    }

    #[test]
    fn tooling_and_test_packages_may_use_the_vendor_sim() {
        let mut pkgs = good();
        pkgs.push(json!({
            "name": "im-integration-tests",
            "manifest_path": "/w/tests/Cargo.toml",
            "dependencies": [{ "name": "im-vendor-sim", "kind": null }],
        }));
        pkgs.push(json!({
            "name": "im-benches",
            "manifest_path": "/w/benches/Cargo.toml",
            "dependencies": [{ "name": "im-vendor-sim", "kind": null }],
        }));
        let i = pkgs.iter().position(|p| p["name"] == "xtask").unwrap();
        pkgs[i] = pkg("xtask", &[("im-vendor-sim", None)]);
        assert_eq!(check(&json!({ "packages": pkgs })), Vec::<String>::new());
    }

    #[test]
    fn missing_crates_are_reported() {
        let pkgs: Vec<Value> = good()
            .into_iter()
            .filter(|p| p["name"] != "im-qc")
            .collect();
        assert_eq!(check(&json!({ "packages": pkgs })), ["missing crate im-qc"]);
    }

    /// The real workspace keeps the rule: `cargo test` catches a bad dependency.
    #[test]
    fn this_workspace_keeps_its_layers() {
        let meta = workspace_metadata().unwrap();
        assert_eq!(check(&meta), Vec::<String>::new());
    }
}
