//! The rows of a record batch in the store schema as filter rows ([`BatchRows`]).

use super::*;

/// The rows of a canonical event batch, for filters: each column downcast once per batch.
pub struct BatchRows<'a> {
    cols: Vec<Col<'a>>,
    len: usize,
}

enum Col<'a> {
    Str(&'a arrow::array::StringArray),
    I32(&'a arrow::array::Int32Array),
    U16(&'a arrow::array::UInt16Array),
    U32(&'a arrow::array::UInt32Array),
    Bool(&'a arrow::array::BooleanArray),
    Bin(&'a arrow::array::BinaryArray),
    Other,
}

impl<'a> BatchRows<'a> {
    /// A view of a batch in the canonical schema (`vigil_schemas::canonical_schema`), or of the
    /// store's rows (the canonical columns come first).
    pub fn new(batch: &'a arrow::record_batch::RecordBatch) -> BatchRows<'a> {
        use arrow::array::AsArray;
        use arrow::datatypes::{Int32Type, UInt16Type, UInt32Type};
        let n = canonical_schema().fields().len().min(batch.num_columns());
        let cols = (0..n)
            .map(|i| {
                let a = batch.column(i);
                match a.data_type() {
                    DataType::Utf8 => Col::Str(a.as_string::<i32>()),
                    DataType::Int32 => Col::I32(a.as_primitive::<Int32Type>()),
                    DataType::UInt16 => Col::U16(a.as_primitive::<UInt16Type>()),
                    DataType::UInt32 => Col::U32(a.as_primitive::<UInt32Type>()),
                    DataType::Boolean => Col::Bool(a.as_boolean()),
                    DataType::Binary => Col::Bin(a.as_binary::<i32>()),
                    _ => Col::Other,
                }
            })
            .collect();
        BatchRows {
            cols,
            len: batch.num_rows(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Row `i` (< `len()`).
    pub fn row(&self, i: usize) -> BatchRow<'_, 'a> {
        debug_assert!(i < self.len);
        BatchRow { rows: self, i }
    }
}

/// One row of a [`BatchRows`].
pub struct BatchRow<'r, 'a> {
    rows: &'r BatchRows<'a>,
    i: usize,
}

impl Row for BatchRow<'_, '_> {
    fn str(&self, column: usize) -> Option<&str> {
        use arrow::array::Array;
        match self.rows.cols.get(column)? {
            Col::Str(a) if a.is_valid(self.i) => Some(a.value(self.i)),
            _ => None,
        }
    }

    fn int(&self, column: usize) -> Option<i64> {
        use arrow::array::Array;
        let i = self.i;
        match self.rows.cols.get(column)? {
            Col::I32(a) if a.is_valid(i) => Some(a.value(i).into()),
            Col::U16(a) if a.is_valid(i) => Some(a.value(i).into()),
            Col::U32(a) if a.is_valid(i) => Some(a.value(i).into()),
            _ => None,
        }
    }

    fn bool(&self, column: usize) -> Option<bool> {
        use arrow::array::Array;
        match self.rows.cols.get(column)? {
            Col::Bool(a) if a.is_valid(self.i) => Some(a.value(self.i)),
            _ => None,
        }
    }

    fn raw(&self) -> Option<&[u8]> {
        use arrow::array::Array;
        match self.rows.cols.get(vigil_schemas::schema::idx::RAW)? {
            Col::Bin(a) if a.is_valid(self.i) => Some(a.value(self.i)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use vigil_schemas::{Decoder, EventBatchBuilder};

    #[test]
    fn filters_run_on_decoded_batches() {
        let lines = [
            r#"{"decision_id":"a","path":"envoy/authz/allow","result":false,"timestamp":"2026-11-22T10:00:00Z","input":{"attributes":{"source":{"address":{"socketAddress":{"address":"10.4.0.9","portValue":41000}},"principal":"spiffe://cluster.local/ns/web/sa/frontend"},"destination":{"principal":"spiffe://cluster.local/ns/shop/sa/orders"},"request":{"http":{"method":"DELETE","path":"/api/orders/7"}}}}}"#,
            r#"{"decision_id":"b","path":"envoy/authz/allow","result":true,"timestamp":"2026-11-22T10:00:01Z","input":{"attributes":{"source":{"address":{"socketAddress":{"address":"192.168.1.5","portValue":41001}},"principal":"spiffe://cluster.local/ns/web/sa/frontend"},"destination":{"principal":"spiffe://cluster.local/ns/shop/sa/orders"},"request":{"http":{"method":"GET","path":"/api/orders/7"}}}}}"#,
        ];
        let d = Decoder::default();
        let mut b = EventBatchBuilder::with_capacity(4);
        for l in lines {
            d.decode_with(l.as_bytes(), |e| b.append(e, 0)).unwrap();
        }
        let batch = b.finish().unwrap();
        let rows = BatchRows::new(&batch);
        let f = Filter::parse(
            r#"decision == "deny" and caller_ip cidr "10.0.0.0/8" and caller_port == 41000 and action in ["DELETE", "POST"] and callee_principal matches "/ns/shop/""#,
        )
        .unwrap();
        let hits: Vec<bool> = (0..rows.len()).map(|i| f.matches(&rows.row(i))).collect();
        assert_eq!(hits, [true, false]);
        let allow =
            Filter::parse(r#"decision == "allow" and not caller_ip cidr "10.0.0.0/8""#).unwrap();
        assert!(allow.matches(&rows.row(1)));
    }
}
