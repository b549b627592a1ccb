//! Triton's classification extension (spec section (i)): an output replaced by its top k
//! entries per batch item, as BYTES strings `"<value>:<index>"` or `"<value>:<index>:<label>"`.

use ndarray::{ArrayD, IxDyn};

use crate::config::DataType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Elements above which Triton refuses to classify.
const MAX_ELEMENTS: usize = 1_000_000;

/// C++ `std::to_string`: floats with six decimals, integers plainly.
fn values(t: &Tensor) -> Result<Vec<(f64, String)>> {
    macro_rules! ints {
        ($ty:ty) => {
            t.view::<$ty>()?
                .iter()
                .map(|&v| (v as f64, v.to_string()))
                .collect()
        };
    }
    macro_rules! floats {
        ($ty:ty) => {
            t.view::<$ty>()?
                .iter()
                .map(|&v| (v as f64, format!("{:.6}", v as f64)))
                .collect()
        };
    }
    Ok(match t.data_type() {
        DataType::TypeUint8 => ints!(u8),
        DataType::TypeUint16 => ints!(u16),
        DataType::TypeUint32 => ints!(u32),
        DataType::TypeUint64 => ints!(u64),
        DataType::TypeInt8 => ints!(i8),
        DataType::TypeInt16 => ints!(i16),
        DataType::TypeInt32 => ints!(i32),
        DataType::TypeInt64 => ints!(i64),
        DataType::TypeFp32 => floats!(f32),
        DataType::TypeFp64 => floats!(f64),
        other => {
            return Err(Error::invalid_input(format!(
                "class result not available for output due to unsupported type '{}'",
                other.protocol_name()
            )))
        }
    })
}

/// The top `k` classes of `t` per batch item (the leading dim when `batching`).
pub(crate) fn classify(
    t: &Tensor,
    k: usize,
    batching: bool,
    labels: Option<&[String]>,
) -> Result<Tensor> {
    if t.len() > MAX_ELEMENTS {
        return Err(Error::invalid_input(
            "classification output tensor too large",
        ));
    }
    let vals = values(t)?;
    let batch = if batching {
        t.shape().first().copied().unwrap_or(1)
    } else {
        1
    };
    let per_item = vals.len().checked_div(batch).unwrap_or(0);
    let take = k.min(per_item);
    let mut out = Vec::with_capacity(batch * take);
    for item in vals.chunks(per_item.max(1)).take(batch) {
        let mut order: Vec<usize> = (0..item.len()).collect();
        order.sort_unstable_by(|&a, &b| item[b].0.total_cmp(&item[a].0));
        for &i in order.iter().take(take) {
            let label = labels.and_then(|l| l.get(i)).filter(|l| !l.is_empty());
            out.push(match label {
                Some(l) => format!("{}:{i}:{l}", item[i].1),
                None => format!("{}:{i}", item[i].1),
            });
        }
    }
    let shape = if batching {
        vec![batch, take]
    } else {
        vec![take]
    };
    let arr = ArrayD::from_shape_vec(IxDyn(&shape), out)
        .map_err(|e| Error::invalid_input(e.to_string()))?;
    Tensor::from_bytes(arr.shape(), arr.iter().map(String::as_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn top_k_per_batch_item_with_labels() {
        let t = Tensor::from(
            Array2::from_shape_vec((2, 3), vec![0.1f32, 3.3, 2.0, 5.0, -1.0, 0.5]).unwrap(),
        );
        let labels: Vec<String> = ["cat", "", "dog"].iter().map(|s| s.to_string()).collect();
        let c = classify(&t, 2, true, Some(&labels)).unwrap();
        assert_eq!(c.shape(), &[2, 2]);
        let got: Vec<&[u8]> = c.bytes().unwrap();
        assert_eq!(
            got,
            [
                b"3.300000:1".as_slice(),
                b"2.000000:2:dog",
                b"5.000000:0:cat",
                b"0.500000:2:dog"
            ]
        );
        let ints = Tensor::from(ndarray::Array1::from(vec![4i32, 9, 1]));
        let c = classify(&ints, 5, false, None).unwrap();
        assert_eq!(c.shape(), &[3]);
        assert_eq!(c.bytes().unwrap()[0], b"9:1");
        let b = Tensor::from(ndarray::Array1::from(vec![true]));
        assert_eq!(
            classify(&b, 1, false, None).unwrap_err().to_string(),
            "class result not available for output due to unsupported type 'BOOL'"
        );
    }
}
