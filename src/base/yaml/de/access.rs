//! serde's access to compound nodes: the elements of a sequence, the entries of a mapping,
//! and the `{variant: content}` of an enum, each skipping what [`super::collect`] set aside.
//!
//! It stands apart from the node deserialiser in the parent because these are serde's
//! walking protocols (one trait each), while the parent decides what one node reads as.

use super::{De, Error, Fix, Fixes};
use crate::base::yaml::Node;
use serde::de::{self, DeserializeSeed, Visitor};

pub(super) struct SeqDe<'a> {
    pub(super) items: std::slice::Iter<'a, Node>,
    pub(super) fixes: &'a Fixes,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let fixes = self.fixes;
        let Some(node) = self
            .items
            .by_ref()
            .find(|n| fixes.get(&n.id) != Some(&Fix::Skip))
        else {
            return Ok(None);
        };
        let de = De { node, fixes };
        let result = seed.deserialize(De { node, fixes });
        de.here(result).map(Some)
    }
}

pub(super) struct MapDe<'a> {
    pub(super) entries: std::slice::Iter<'a, (Node, Node)>,
    pub(super) value: Option<&'a Node>,
    pub(super) fixes: &'a Fixes,
}

impl<'de> de::MapAccess<'de> for MapDe<'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let fixes = self.fixes;
        let Some((key, value)) = self.entries.by_ref().find(|(k, v)| {
            fixes.get(&k.id) != Some(&Fix::Skip) && fixes.get(&v.id) != Some(&Fix::Skip)
        }) else {
            return Ok(None);
        };
        self.value = Some(value);
        let de = De { node: key, fixes };
        let result = seed.deserialize(De { node: key, fixes });
        de.here(result).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let node = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value without a key"))?;
        let fixes = self.fixes;
        let de = De { node, fixes };
        let result = seed.deserialize(De { node, fixes });
        de.here(result)
    }
}

/// An enum written as `{variant: content}`: the key names the variant, the value feeds it.
pub(super) struct EnumDe<'a> {
    pub(super) key: &'a Node,
    pub(super) value: &'a Node,
    pub(super) fixes: &'a Fixes,
}

impl<'de> de::EnumAccess<'de> for EnumDe<'de> {
    type Error = Error;
    type Variant = De<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, De<'de>), Error> {
        let key = De {
            node: self.key,
            fixes: self.fixes,
        };
        let variant = key.here(seed.deserialize(De {
            node: self.key,
            fixes: self.fixes,
        }))?;
        Ok((
            variant,
            De {
                node: self.value,
                fixes: self.fixes,
            },
        ))
    }
}

impl<'de> de::VariantAccess<'de> for De<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, v)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, v)
    }
}
