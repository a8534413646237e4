//! Small conversions between burn tensors and plain vectors.

use burn::tensor::{DType, Int, Tensor};

/// The values of a float tensor as f32, row-major.
pub fn to_f32_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converts to f32")
}

/// The values of an integer tensor as i64, row-major.
pub fn to_i64_vec<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("an int tensor converts to i64")
}

/// One f32 tensor to store: name, shape, row-major values.
pub type NamedF32 = (String, Vec<usize>, Vec<f32>);

/// The bytes of a safetensors file holding f32 `tensors` and `metadata`.
pub fn safetensors_f32(
    tensors: &[NamedF32],
    metadata: std::collections::HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(metadata)).map(sorted_header)
}

/// A serialised safetensors file with its header's keys in sorted order,
/// padded to the same length. Why: the crate writes the metadata map in
/// hash order, so two identical saves differed byte for byte and no
/// checksum could tell whether two runs agree.
fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let entries: std::collections::BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(entries.into_iter().collect())
            }
            other => other,
        }
    }
    let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    else {
        return bytes;
    };
    let Some(Ok(header)) = bytes
        .get(8..8 + n)
        .map(serde_json::from_slice::<serde_json::Value>)
    else {
        return bytes;
    };
    let text = serde_json::to_string(&sorted(header)).expect("JSON values serialise");
    if text.len() <= n {
        bytes[8..8 + text.len()].copy_from_slice(text.as_bytes());
        bytes[8 + text.len()..8 + n].fill(b' ');
    }
    bytes
}

/// Little-endian f32 bytes (a safetensors F32 view's data) as values.
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two saves of the same tensors and metadata are the same bytes,
    /// whatever order the metadata map iterates in.
    #[test]
    fn safetensors_bytes_do_not_depend_on_the_metadata_maps_order() {
        let tensors: Vec<NamedF32> = vec![
            ("b".into(), vec![2], vec![1.0, 2.0]),
            ("a".into(), vec![1, 3], vec![3.0, 4.0, 5.0]),
        ];
        let save = || {
            // A fresh map each time: its hasher's seed, and so its order, differ.
            let md: std::collections::HashMap<String, String> = (0..40)
                .map(|i| (format!("ept.key{i}"), i.to_string()))
                .collect();
            safetensors_f32(&tensors, md).unwrap()
        };
        let first = save();
        for _ in 0..5 {
            assert!(save() == first, "the bytes differ between two saves");
        }
        // Still a file the crate reads, metadata and all.
        let (_, meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["ept.key7"], "7");
        let st = safetensors::SafeTensors::deserialize(&first).unwrap();
        assert_eq!(f32_from_le(st.tensor("a").unwrap().data()), [3.0, 4.0, 5.0]);
    }
}
