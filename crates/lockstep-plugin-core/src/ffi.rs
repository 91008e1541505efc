//! Record batches to and from the ABI's Arrow C Data Interface mirrors.
//!
//! The host and plugins call these two functions and nothing else to cross the boundary, so
//! that ownership is handled in one place: exporting moves the batch's buffers behind release
//! callbacks; importing takes those callbacks over.
//!
//! Invariants: an exported batch is released exactly once, by whoever imports or drops it; a
//! batch from a producer we did not build is imported with [`Validation::Full`].

use std::mem::{size_of, ManuallyDrop};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use arrow::ffi::{from_ffi_and_data_type, FFI_ArrowArray, FFI_ArrowSchema};
use lockstep_plugin_api::{FfiArrowArray, FfiArrowSchema, FfiBatch};

const _: () = assert!(size_of::<FFI_ArrowArray>() == size_of::<FfiArrowArray>());
const _: () = assert!(size_of::<FFI_ArrowSchema>() == size_of::<FfiArrowSchema>());

/// How much an imported batch is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validation {
    /// Every buffer, offset and UTF-8 string: for batches from code we did not build.
    Full,
    /// Trust the producer: for batches the host itself exported.
    Trusted,
}

/// Moves `batch` into the C Data Interface structs of the ABI.
pub fn export_batch(batch: RecordBatch) -> Result<FfiBatch, ArrowError> {
    let schema = FFI_ArrowSchema::try_from(batch.schema().as_ref())?;
    let array = FFI_ArrowArray::new(&StructArray::from(batch).into_data());
    // SAFETY: both pairs of types are `#[repr(C)]` mirrors of the same C structs (checked by
    // size above and by the field lists); ownership of the release callbacks moves along.
    unsafe {
        Ok(FfiBatch {
            array: std::mem::transmute::<FFI_ArrowArray, FfiArrowArray>(array),
            schema: std::mem::transmute::<FFI_ArrowSchema, FfiArrowSchema>(schema),
        })
    }
}

/// Takes ownership of an exported batch and turns it back into a record batch.
pub fn import_batch(batch: FfiBatch, validation: Validation) -> Result<RecordBatch, ArrowError> {
    let batch = ManuallyDrop::new(batch);
    // SAFETY: the structs are layout-identical mirrors; `ManuallyDrop` keeps `FfiBatch`'s own
    // Drop from releasing what arrow's structs now own.
    let (array, schema) = unsafe {
        (
            std::ptr::read(&batch.array as *const FfiArrowArray as *const FFI_ArrowArray),
            std::ptr::read(&batch.schema as *const FfiArrowSchema as *const FFI_ArrowSchema),
        )
    };
    if array.is_released() {
        return Err(ArrowError::CDataInterface(
            "the batch was already released by its producer".into(),
        ));
    }
    let schema = Arc::new(Schema::try_from(&schema)?);
    // SAFETY: the producer promises C Data Interface conformance; `Validation::Full` checks it.
    let data = unsafe { from_ffi_and_data_type(array, DataType::Struct(schema.fields().clone()))? };
    if validation == Validation::Full {
        data.validate_full()?;
    }
    let columns = StructArray::from(data);
    if columns.null_count() > 0 {
        return Err(ArrowError::CDataInterface(
            "a batch's top-level struct must have no null rows".into(),
        ));
    }
    let (_, columns, _) = columns.into_parts();
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;
    use std::collections::HashMap;

    fn sample() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("doc", DataType::Utf8, true).with_metadata(HashMap::from([(
                "lockstep.type".to_string(),
                "json".to_string(),
            )])),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("{}"), None, Some("[1]")])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn batches_round_trip_with_field_metadata() {
        let batch = sample();
        let back = import_batch(export_batch(batch.clone()).unwrap(), Validation::Full).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.schema().field(1).metadata()["lockstep.type"], "json");
    }

    #[test]
    fn sliced_batches_round_trip() {
        let batch = sample().slice(1, 2);
        let back = import_batch(export_batch(batch.clone()).unwrap(), Validation::Full).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn dropping_an_exported_batch_releases_it() {
        let batch = sample();
        let values = batch.column(0).to_data().buffers()[0].clone();
        let before = values.strong_count();
        let exported = export_batch(batch).unwrap();
        assert!(values.strong_count() >= before);
        drop(exported);
        assert_eq!(values.strong_count(), 1);
    }

    #[test]
    fn inconsistent_offsets_are_refused_by_full_validation() {
        let exported = export_batch(sample()).unwrap();
        // Make the string column's offsets decrease (0, 2, 2, 5 becomes 0, 4, 2, 5). The C
        // Data Interface carries no buffer lengths, so a producer that lies about them cannot
        // be caught here; that is what worker processes are for.
        unsafe {
            let child = &mut **exported.array.children.add(1);
            let offsets = *child.buffers.add(1) as *mut i32;
            *offsets.add(1) = 4;
        }
        let err = import_batch(exported, Validation::Full).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("offset"), "{err}");
    }
}
