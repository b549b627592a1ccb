//! `tensor`: the values that go in and out of a model. A [`Tensor`] is an immutable, cheaply
//! cloneable (shared) n-dimensional array of one of Triton's data types.

use std::sync::Arc;

use half::f16;
use ndarray::{ArrayD, ArrayViewD, Dimension};
use tract_onnx::prelude::{tract_data::prelude::Blob, DatumType, Tensor as TractTensor};

use crate::config::DataType;
use crate::error::{Error, ErrorKind, Result};

/// An n-dimensional array with a Triton data type. Cloning shares the data.
#[derive(Clone, Debug)]
pub struct Tensor {
    inner: Arc<TractTensor>,
}

/// Element types a [`Tensor`] can hold and be viewed as.
pub trait Element: tract_onnx::prelude::Datum + Sized {
    /// The Triton data type of this element type.
    const DATA_TYPE: DataType;
}

macro_rules! element {
    ($($t:ty => $dt:ident),* $(,)?) => {$(
        impl Element for $t {
            const DATA_TYPE: DataType = DataType::$dt;
        }
        impl<D: Dimension> From<ndarray::Array<$t, D>> for Tensor {
            fn from(a: ndarray::Array<$t, D>) -> Tensor {
                Tensor::from_tract(TractTensor::from(a.into_dyn()))
            }
        }
    )*};
}

element! {
    bool => TypeBool, u8 => TypeUint8, u16 => TypeUint16, u32 => TypeUint32, u64 => TypeUint64,
    i8 => TypeInt8, i16 => TypeInt16, i32 => TypeInt32, i64 => TypeInt64,
    f16 => TypeFp16, f32 => TypeFp32, f64 => TypeFp64,
}

/// The Triton data type of a tract datum type, if it has one.
pub(crate) fn data_type_of(dt: DatumType) -> Option<DataType> {
    Some(match dt.unquantized() {
        DatumType::Bool => DataType::TypeBool,
        DatumType::U8 => DataType::TypeUint8,
        DatumType::U16 => DataType::TypeUint16,
        DatumType::U32 => DataType::TypeUint32,
        DatumType::U64 => DataType::TypeUint64,
        DatumType::I8 => DataType::TypeInt8,
        DatumType::I16 => DataType::TypeInt16,
        DatumType::I32 => DataType::TypeInt32,
        DatumType::I64 => DataType::TypeInt64,
        DatumType::F16 => DataType::TypeFp16,
        DatumType::F32 => DataType::TypeFp32,
        DatumType::F64 => DataType::TypeFp64,
        DatumType::String | DatumType::Blob => DataType::TypeString,
        _ => return None,
    })
}

impl<B: AsRef<[u8]>> FromIterator<B> for Tensor {
    /// A 1-D BYTES (TYPE_STRING) tensor from byte strings.
    fn from_iter<I: IntoIterator<Item = B>>(iter: I) -> Tensor {
        let items: Vec<Blob> = iter
            .into_iter()
            .map(|b| Blob::from_bytes(b.as_ref()).unwrap_or_default())
            .collect();
        let n = items.len();
        Tensor::from_tract(TractTensor::from(
            ArrayD::from_shape_vec(vec![n], items)
                .unwrap_or_else(|_| ArrayD::from_elem(vec![0], Blob::default())),
        ))
    }
}

impl Tensor {
    pub(crate) fn from_tract(t: TractTensor) -> Tensor {
        Tensor { inner: Arc::new(t) }
    }

    pub(crate) fn as_tract(&self) -> &Arc<TractTensor> {
        &self.inner
    }

    /// A BYTES tensor of the given shape from byte strings (row-major).
    pub fn from_bytes<B: AsRef<[u8]>>(
        shape: &[usize],
        items: impl IntoIterator<Item = B>,
    ) -> Result<Tensor> {
        let items: Vec<Blob> = items
            .into_iter()
            .map(|b| Blob::from_bytes(b.as_ref()).unwrap_or_default())
            .collect();
        let n = items.len();
        ArrayD::from_shape_vec(shape.to_vec(), items)
            .map(|a| Tensor::from_tract(TractTensor::from(a)))
            .map_err(|_| {
                Error::invalid_input(format!("{n} byte strings do not fill shape {shape:?}"))
            })
    }

    /// The Triton data type.
    pub fn data_type(&self) -> DataType {
        data_type_of(self.inner.datum_type()).unwrap_or(DataType::TypeInvalid)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.inner.shape()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
    }

    /// Size of the data in bytes as Triton counts it (BYTES: 4-byte length prefix per element).
    pub fn byte_size(&self) -> usize {
        // Check the type first: a failed `as_slice` builds an error (and, with
        // RUST_BACKTRACE set, a backtrace), which cost ~12 µs per call.
        if self.inner.datum_type() == DatumType::Blob {
            if let Ok(items) = self
                .inner
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<Blob>())
            {
                return items.iter().map(|b| 4 + b.len()).sum();
            }
        }
        self.len().saturating_mul(self.data_type().byte_size())
    }

    /// A typed view; errors with [`ErrorKind::DataType`] when `T` is not the element type.
    pub fn view<T: Element>(&self) -> Result<ArrayViewD<'_, T>> {
        if self.data_type() != T::DATA_TYPE {
            return Err(Error::new(
                ErrorKind::DataType,
                format!(
                    "tensor holds {} elements, not {}",
                    self.data_type().as_str_name(),
                    T::DATA_TYPE.as_str_name()
                ),
            ));
        }
        self.inner
            .try_as_plain_ram()
            .and_then(|v| v.to_array_view::<T>())
            .map_err(|e| Error::new(ErrorKind::DataType, e.to_string()))
    }

    /// The elements of a BYTES tensor, row-major.
    pub fn bytes(&self) -> Result<Vec<&[u8]>> {
        let plain = self
            .inner
            .try_as_plain_ram()
            .map_err(|e| Error::new(ErrorKind::DataType, e.to_string()))?;
        match plain.as_slice::<Blob>() {
            Ok(items) => Ok(items.iter().map(|b| b.as_bytes()).collect()),
            Err(_) => match plain.as_slice::<String>() {
                Ok(items) => Ok(items.iter().map(|s| s.as_bytes()).collect()),
                Err(_) => Err(Error::new(
                    ErrorKind::DataType,
                    format!(
                        "tensor holds {} elements, not TYPE_STRING",
                        self.data_type().as_str_name()
                    ),
                )),
            },
        }
    }
}

impl Tensor {
    /// The same elements with another shape (same element count).
    pub fn reshaped(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(self.len()) {
            return Err(Error::invalid_input(format!(
                "cannot reshape {:?} ({} elements) to {shape:?}",
                self.shape(),
                self.len()
            )));
        }
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let mut t = (*self.inner).clone();
        t.set_shape(shape)
            .map_err(|e| Error::invalid_input(e.to_string()))?;
        Ok(Tensor::from_tract(t))
    }
}

/// The tract datum type that holds a Triton data type (BYTES are held as blobs).
fn datum_type_for(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::TypeBool => DatumType::Bool,
        DataType::TypeUint8 => DatumType::U8,
        DataType::TypeUint16 => DatumType::U16,
        DataType::TypeUint32 => DatumType::U32,
        DataType::TypeUint64 => DatumType::U64,
        DataType::TypeInt8 => DatumType::I8,
        DataType::TypeInt16 => DatumType::I16,
        DataType::TypeInt32 => DatumType::I32,
        DataType::TypeInt64 => DatumType::I64,
        DataType::TypeFp16 => DatumType::F16,
        DataType::TypeFp32 => DatumType::F32,
        DataType::TypeFp64 => DatumType::F64,
        DataType::TypeString => DatumType::Blob,
        DataType::TypeInvalid | DataType::TypeBf16 => return None,
    })
}

fn unsupported(dt: DataType) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("tensors of {} are not supported", dt.as_str_name()),
    )
}

fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::ResourceExhausted,
                format!("shape {shape:?} has too many elements"),
            )
        })
}

impl Tensor {
    /// A tensor of `shape` filled with zeros (empty strings for TYPE_STRING).
    pub fn zeros(dt: DataType, shape: &[usize]) -> Result<Tensor> {
        let n = element_count(shape)?;
        if dt == DataType::TypeString {
            return Tensor::from_bytes(shape, std::iter::repeat_n(&[][..], n));
        }
        let datum = datum_type_for(dt).ok_or_else(|| unsupported(dt))?;
        TractTensor::zero_dt(datum, shape)
            .map(Tensor::from_tract)
            .map_err(|e| Error::new(ErrorKind::Unsupported, e.to_string()))
    }

    /// A tensor of `shape` with deterministic pseudo-random values in [0, 1) converted to
    /// `dt` (zeros for TYPE_STRING, as Triton's warmup does).
    pub fn random(dt: DataType, shape: &[usize]) -> Result<Tensor> {
        if dt == DataType::TypeString {
            return Tensor::zeros(dt, shape);
        }
        let n = element_count(shape)?;
        let mut state: u32 = 0x9e37_79b9;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 8) as f32 / (1u32 << 24) as f32
            })
            .collect();
        let datum = datum_type_for(dt).ok_or_else(|| unsupported(dt))?;
        let t = ArrayD::from_shape_vec(shape.to_vec(), values)
            .map(TractTensor::from)
            .map_err(|e| Error::invalid_input(e.to_string()))?;
        t.cast_to_dt(datum)
            .map(|c| Tensor::from_tract(c.into_owned()))
            .map_err(|e| Error::new(ErrorKind::Unsupported, e.to_string()))
    }

    /// A tensor from raw little-endian row-major bytes, as Triton's binary tensor format and
    /// warmup data files hold them (BOOL: one byte each; BYTES: each element prefixed by a
    /// 4-byte little-endian length).
    pub fn from_le_bytes(dt: DataType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
        let n = element_count(shape)?;
        let mismatch = |expected: usize| {
            Error::invalid_input(format!(
                "{} bytes do not hold {n} elements of {} (expected {expected})",
                bytes.len(),
                dt.as_str_name()
            ))
        };
        if dt == DataType::TypeString {
            let mut items = Vec::with_capacity(n.min(1 << 20));
            let mut rest = bytes;
            for _ in 0..n {
                let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(|| mismatch(0))?;
                let len = u32::from_le_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(mismatch(0));
                }
                items.push(&tail[..len]);
                rest = &tail[len..];
            }
            if !rest.is_empty() {
                return Err(mismatch(bytes.len() - rest.len()));
            }
            return Tensor::from_bytes(shape, items);
        }
        let size = dt.byte_size();
        if size == 0 {
            return Err(unsupported(dt));
        }
        let expected = n.checked_mul(size).ok_or_else(|| mismatch(usize::MAX))?;
        if bytes.len() != expected {
            return Err(mismatch(expected));
        }
        macro_rules! build {
            ($t:ty, $conv:expr) => {{
                let v: Vec<$t> = bytes.chunks_exact(size).map($conv).collect();
                ArrayD::from_shape_vec(shape.to_vec(), v)
                    .map(Tensor::from)
                    .map_err(|e| Error::invalid_input(e.to_string()))
            }};
        }
        macro_rules! le {
            ($t:ty) => {
                build!($t, |c: &[u8]| <$t>::from_le_bytes(
                    c.try_into().unwrap_or_default()
                ))
            };
        }
        match dt {
            DataType::TypeBool => build!(bool, |c: &[u8]| c[0] != 0),
            DataType::TypeUint8 => le!(u8),
            DataType::TypeUint16 => le!(u16),
            DataType::TypeUint32 => le!(u32),
            DataType::TypeUint64 => le!(u64),
            DataType::TypeInt8 => le!(i8),
            DataType::TypeInt16 => le!(i16),
            DataType::TypeInt32 => le!(i32),
            DataType::TypeInt64 => le!(i64),
            DataType::TypeFp16 => build!(f16, |c: &[u8]| f16::from_le_bytes([c[0], c[1]])),
            DataType::TypeFp32 => le!(f32),
            DataType::TypeFp64 => le!(f64),
            _ => Err(unsupported(dt)),
        }
    }
}

impl Tensor {
    /// The elements as raw little-endian row-major bytes: the inverse of
    /// [`from_le_bytes`](Self::from_le_bytes), Triton's binary tensor format (BOOL: one byte
    /// each; BYTES: each element prefixed by its 4-byte little-endian length).
    pub fn to_le_bytes(&self) -> Result<Vec<u8>> {
        let dt = self.data_type();
        if dt == DataType::TypeString {
            let items = self.bytes()?;
            let mut out = Vec::with_capacity(self.byte_size());
            for item in items {
                let len = u32::try_from(item.len()).map_err(|_| {
                    Error::new(
                        ErrorKind::ResourceExhausted,
                        "a BYTES element is longer than 4 GiB",
                    )
                })?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(item);
            }
            return Ok(out);
        }
        macro_rules! le {
            ($t:ty) => {{
                let view = self.view::<$t>()?;
                let mut out = Vec::with_capacity(self.byte_size());
                for v in view.iter() {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Ok(out)
            }};
        }
        match dt {
            DataType::TypeBool => Ok(self.view::<bool>()?.iter().map(|&b| b as u8).collect()),
            DataType::TypeUint8 => Ok(self.view::<u8>()?.iter().copied().collect()),
            DataType::TypeUint16 => le!(u16),
            DataType::TypeUint32 => le!(u32),
            DataType::TypeUint64 => le!(u64),
            DataType::TypeInt8 => le!(i8),
            DataType::TypeInt16 => le!(i16),
            DataType::TypeInt32 => le!(i32),
            DataType::TypeInt64 => le!(i64),
            DataType::TypeFp16 => le!(f16),
            DataType::TypeFp32 => le!(f32),
            DataType::TypeFp64 => le!(f64),
            _ => Err(unsupported(dt)),
        }
    }

    /// The tensors stacked along their first dim (all other dims equal): the rows of a batch.
    pub(crate) fn concat_rows(parts: &[Tensor]) -> Result<Tensor> {
        if let [one] = parts {
            return Ok(one.clone());
        }
        let inner: Vec<TractTensor> = parts.iter().map(|t| (*t.inner).clone()).collect();
        TractTensor::stack_tensors(0, &inner)
            .map(Tensor::from_tract)
            .map_err(|e| Error::invalid_input(format!("cannot batch tensors: {e}")))
    }

    /// Rows `start..end` of the first dim.
    pub(crate) fn rows(&self, start: usize, end: usize) -> Result<Tensor> {
        if start == 0 && self.shape().first() == Some(&end) {
            return Ok(self.clone());
        }
        self.inner
            .slice(0, start, end)
            .map(Tensor::from_tract)
            .map_err(|e| Error::new(ErrorKind::Execution, format!("cannot split a batch: {e}")))
    }
}
