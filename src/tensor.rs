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
        let items: Vec<Blob> = iter.into_iter().map(|b| Blob::from_bytes(b.as_ref()).unwrap_or_default()).collect();
        let n = items.len();
        Tensor::from_tract(TractTensor::from(ArrayD::from_shape_vec(vec![n], items).unwrap_or_else(|_| ArrayD::from_elem(vec![0], Blob::default()))))
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
    pub fn from_bytes<B: AsRef<[u8]>>(shape: &[usize], items: impl IntoIterator<Item = B>) -> Result<Tensor> {
        let items: Vec<Blob> = items
            .into_iter()
            .map(|b| Blob::from_bytes(b.as_ref()).unwrap_or_default())
            .collect();
        let n = items.len();
        ArrayD::from_shape_vec(shape.to_vec(), items)
            .map(|a| Tensor::from_tract(TractTensor::from(a)))
            .map_err(|_| {
                Error::invalid_input(format!(
                    "{n} byte strings do not fill shape {shape:?}"
                ))
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
        match self.inner.as_slice::<Blob>() {
            Ok(items) => items.iter().map(|b| 4 + b.len()).sum(),
            Err(_) => self.len() * self.data_type().byte_size(),
        }
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
            .to_array_view::<T>()
            .map_err(|e| Error::new(ErrorKind::DataType, e.to_string()))
    }

    /// The elements of a BYTES tensor, row-major.
    pub fn bytes(&self) -> Result<Vec<&[u8]>> {
        match self.inner.as_slice::<Blob>() {
            Ok(items) => Ok(items.iter().map(|b| b.as_bytes()).collect()),
            Err(_) => match self.inner.as_slice::<String>() {
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
