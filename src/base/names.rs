//! Values stored and shown by a fixed name (audit events, timeline kinds): one place that
//! makes such a type print, compare, serialise and read back as its name, so every one of
//! them keeps the stored bytes exactly and reads an unknown name without failing.

/// Implements `Display`, `PartialEq<&str>`, `Serialize` and `Deserialize` for `$type` through
/// its `as_str(&self) -> &str` and `from_name(&str) -> Self` (which must accept any name).
macro_rules! stored_name {
    ($type:ty) => {
        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $type {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = <String as serde::Deserialize>::deserialize(deserializer)?;
                Ok(<$type>::from_name(&name))
            }
        }
    };
}

pub(crate) use stored_name;
