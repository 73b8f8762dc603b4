//! Golden fixtures: checked-in encodings that pin every format written to disk or the wire.
//!
//! A fixture is a file `{name}.{version}.{ext}` (e.g. `message.v1.bin`) holding the encoding
//! of a *canonical value* of one type (neither name nor version contains a dot). A fixture
//! test, one per crate that owns formats, calls [`Fixtures::check`] for each canonical value
//! and [`Fixtures::finish`] at the end, which fails when:
//!
//! * encoding the canonical value today does not give exactly the bytes of the fixture of
//!   the current version: the format changed without a new version;
//! * a fixture of any version (old ones included) no longer decodes into the canonical
//!   value: the current code lost the ability to read data already written;
//! * the fixture of the current version is missing, or a file of the folder belongs to no
//!   checked value.
//!
//! Creating fixtures: run the test with `IM_BLESS_FIXTURES=1`; it writes the missing files
//! of the current versions (it never rewrites an existing one), which are then checked in.
//! After a deliberate format change, bump the version (the codec's
//! [`FORMAT_VERSION`](super::FORMAT_VERSION) or the owning crate's record/schema version),
//! keep a decoder for the old version, and bless: the new version adds files next to the old.
//! New fields of a canonical value keep their default values, so that an old fixture and a
//! new one describe the same value.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The environment variable that makes [`Fixtures`] write missing fixtures.
pub const BLESS_ENV: &str = "IM_BLESS_FIXTURES";

/// A folder of golden fixtures and the findings of one test run over it.
#[derive(Debug)]
pub struct Fixtures {
    dir: PathBuf,
    bless: bool,
    failures: Vec<String>,
    checked: BTreeSet<String>,
}

impl Fixtures {
    /// The fixtures in `dir`; blessing is on when [`BLESS_ENV`] is set to `1`.
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            bless: std::env::var(BLESS_ENV).is_ok_and(|v| v == "1"),
            failures: Vec::new(),
            checked: BTreeSet::new(),
        }
    }

    /// Checks `canonical` against its [`codec`](super) fixtures `{name}.{version}.bin`.
    pub fn check<T>(&mut self, name: &str, version: &str, canonical: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        self.check_encoding(
            name,
            version,
            "bin",
            canonical,
            |v| super::encode(v).map_err(|e| e.to_string()),
            |b| super::decode(b).map_err(|e| e.to_string()),
        );
    }

    /// Checks `canonical` against its fixtures `{name}.{version}.{ext}` written with another
    /// encoding (e.g. the JSON of a callback body).
    pub fn check_encoding<T: PartialEq + Debug>(
        &mut self,
        name: &str,
        version: &str,
        ext: &str,
        canonical: &T,
        encode: impl Fn(&T) -> Result<Vec<u8>, String>,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) {
        let type_name = std::any::type_name::<T>();
        let current = format!("{name}.{version}.{ext}");
        let bytes = match encode(canonical) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.failures
                    .push(format!("{current}: cannot encode {type_name}: {e}"));
                return;
            }
        };
        let path = self.dir.join(&current);
        match std::fs::read(&path) {
            Ok(fixture) if fixture == bytes => {}
            Ok(fixture) => self.failures.push(format!(
                "the bytes of {type_name} changed without a new format version: bump \
                 codec::FORMAT_VERSION (or the type's record version) and add a fixture for \
                 the new version; keep decoding the old one (fixture {current}: {} bytes \
                 checked in, {} bytes encoded now)",
                fixture.len(),
                bytes.len()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.bless => {
                if let Err(e) =
                    std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::write(&path, &bytes))
                {
                    self.failures
                        .push(format!("cannot write {}: {e}", path.display()));
                }
            }
            Err(e) => self.failures.push(format!(
                "no fixture {} for {type_name} ({e}): run the test with {BLESS_ENV}=1 to \
                 create it, and check it in",
                path.display()
            )),
        }
        // Every version ever written must still decode into the canonical value.
        for file in self.files_of(name, ext) {
            let found = match std::fs::read(self.dir.join(&file)) {
                Ok(found) => found,
                Err(e) => {
                    self.failures.push(format!("cannot read {file}: {e}"));
                    continue;
                }
            };
            match decode(&found) {
                Ok(value) if value == *canonical => {}
                Ok(value) => self.failures.push(format!(
                    "fixture {file} decodes into a different {type_name}: {value:?}, \
                     expected {canonical:?}"
                )),
                Err(e) => self.failures.push(format!(
                    "fixture {file} no longer decodes as {type_name}: {e}; data written in \
                     that version must stay readable (keep a decoder for it)"
                )),
            }
            self.checked.insert(file);
        }
    }

    /// Fails (panics with every finding) if any check failed or a fixture file was checked
    /// by no call.
    pub fn finish(mut self) {
        for file in list(&self.dir) {
            if !self.checked.contains(&file) {
                self.failures.push(format!(
                    "fixture {file} is checked by no test: check its value or remove it"
                ));
            }
        }
        assert!(
            self.failures.is_empty(),
            "{} golden fixture failure(s) in {}:\n- {}",
            self.failures.len(),
            self.dir.display(),
            self.failures.join("\n- ")
        );
    }

    /// Names of the files `{name}.{version}.{ext}` of the folder, any version.
    fn files_of(&self, name: &str, ext: &str) -> Vec<String> {
        list(&self.dir)
            .into_iter()
            .filter(|file| {
                file.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .and_then(|rest| rest.strip_suffix(ext))
                    .and_then(|rest| rest.strip_suffix('.'))
                    .is_some_and(|version| !version.is_empty() && !version.contains('.'))
            })
            .collect()
    }
}

/// File names in `dir`, sorted; none if it does not exist.
fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::FORMAT_VERSION;

    /// A fresh folder under the temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("im-golden-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn fixtures(&self, bless: bool) -> Fixtures {
            Fixtures {
                bless,
                ..Fixtures::open(&self.0)
            }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn failure_of(f: Fixtures) -> String {
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.finish()))
            .expect_err("the check fails");
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn blessing_creates_missing_fixtures_then_they_pass() {
        let dir = Dir::new("bless");
        let mut f = dir.fixtures(false);
        f.check("pair", "v1", &(1u32, "a".to_owned()));
        assert!(failure_of(f).contains("run the test with IM_BLESS_FIXTURES=1"));

        let mut f = dir.fixtures(true);
        f.check("pair", "v1", &(1u32, "a".to_owned()));
        f.finish();
        let mut f = dir.fixtures(false);
        f.check("pair", "v1", &(1u32, "a".to_owned()));
        f.finish();
    }

    #[test]
    fn changed_bytes_without_a_new_version_fail_even_when_blessing() {
        let dir = Dir::new("changed");
        let mut f = dir.fixtures(true);
        f.check("pair", "v1", &(1u32, "a".to_owned()));
        f.finish();
        // The "same" value with an added field: the bytes change, the version does not.
        let mut f = dir.fixtures(true);
        f.check("pair", "v1", &(1u32, "a".to_owned(), false));
        let failure = failure_of(f);
        assert!(
            failure.contains("changed without a new format version: bump codec::FORMAT_VERSION"),
            "{failure}"
        );
        assert!(
            failure.contains("fixture pair.v1.bin no longer decodes"),
            "{failure}"
        );
    }

    #[test]
    fn old_versions_must_still_decode_and_strays_are_reported() {
        let dir = Dir::new("old");
        std::fs::write(dir.0.join("pair.v0.bin"), [FORMAT_VERSION, 0xff]).unwrap();
        std::fs::write(dir.0.join("stray.v1.bin"), [FORMAT_VERSION]).unwrap();
        let mut f = dir.fixtures(true);
        f.check("pair", "v1", &(1u32, "a".to_owned()));
        let failure = failure_of(f);
        assert!(
            failure.contains("fixture pair.v0.bin no longer decodes"),
            "{failure}"
        );
        assert!(
            failure.contains("fixture stray.v1.bin is checked by no test"),
            "{failure}"
        );
        assert!(!failure.contains("pair.v1.bin"), "{failure}");
    }
}
