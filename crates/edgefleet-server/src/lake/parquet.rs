//! Parquet encoding of lake files, in memory: one row group per file, Snappy-compressed,
//! with the low-level column writers of the `parquet` crate.
//!
//! Schemas (every column required):
//! - stream records: `node`, `stream`, `deployment` (strings), `seq` (int64), `time`,
//!   `received_at` (timestamps, milliseconds, UTC), `kind` (`json` or `bytes`) and `data`:
//!   a string holding the JSON text in files of JSON records, binary in files of bytes
//!   records (a file holds one kind, see `layout::FileKind`);
//! - metric samples: `node`, `name`, `labels` (the labels as a JSON object, a string),
//!   `time` (timestamp, milliseconds, UTC), `value` (double).

use std::sync::Arc;

use edgefleet_wire::Timestamp;
use parquet::basic::Compression;
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::layout::FileKind;
use super::rows::{LakeMetricRow, LakeRecordRow, RecordPayload};

/// Encoding a file failed; the message says which column.
#[derive(Debug, thiserror::Error)]
#[error("encoding Parquet ({what}): {source}")]
pub struct EncodeError {
    what: String,
    #[source]
    source: parquet::errors::ParquetError,
}

fn failed(what: impl Into<String>) -> impl FnOnce(parquet::errors::ParquetError) -> EncodeError {
    let what = what.into();
    move |source| EncodeError { what, source }
}

const RECORD_COLUMNS: &str = "
    required binary node (STRING);
    required binary stream (STRING);
    required binary deployment (STRING);
    required int64 seq;
    required int64 time (TIMESTAMP(MILLIS,true));
    required int64 received_at (TIMESTAMP(MILLIS,true));
    required binary kind (STRING);";

/// The schema of a file of this kind, in the Parquet message syntax.
pub fn schema(kind: FileKind) -> String {
    match kind {
        FileKind::JsonRecords => {
            format!(
                "message stream_record {{{RECORD_COLUMNS}\n    required binary data (STRING);\n}}"
            )
        }
        FileKind::BytesRecords => {
            format!("message stream_record {{{RECORD_COLUMNS}\n    required binary data;\n}}")
        }
        FileKind::Metrics => "message metric_sample {
    required binary node (STRING);
    required binary name (STRING);
    required binary labels (STRING);
    required int64 time (TIMESTAMP(MILLIS,true));
    required double value;
}"
        .to_owned(),
    }
}

/// The values of one column, in schema order.
enum Column {
    Bytes(Vec<ByteArray>),
    Int64(Vec<i64>),
    Double(Vec<f64>),
}

fn text<'r, T: 'r>(rows: &[&'r T], field: impl Fn(&'r T) -> &'r str) -> Column {
    Column::Bytes(rows.iter().map(|row| ByteArray::from(field(row))).collect())
}

/// Milliseconds since the Unix epoch (floor), saturating at the ends of i64.
pub fn millis(time: Timestamp) -> i64 {
    let millis = time.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(millis).unwrap_or(if millis < 0 { i64::MIN } else { i64::MAX })
}

/// Encodes stream records (all of `kind`, JSON or bytes records) as one Parquet file.
pub fn encode_records(kind: FileKind, rows: &[&LakeRecordRow]) -> Result<Vec<u8>, EncodeError> {
    let columns = vec![
        text(rows, |r| r.node.as_str()),
        text(rows, |r| r.stream.as_str()),
        text(rows, |r| r.deployment.as_str()),
        Column::Int64(
            rows.iter()
                .map(|r| i64::try_from(r.seq).unwrap_or(i64::MAX))
                .collect(),
        ),
        Column::Int64(rows.iter().map(|r| millis(r.time)).collect()),
        Column::Int64(rows.iter().map(|r| millis(r.received_at)).collect()),
        text(rows, |r| match r.payload {
            RecordPayload::Json(_) => "json",
            RecordPayload::Bytes(_) => "bytes",
        }),
        Column::Bytes(
            rows.iter()
                .map(|r| match &r.payload {
                    RecordPayload::Json(text) => ByteArray::from(text.as_str()),
                    RecordPayload::Bytes(bytes) => ByteArray::from(bytes.clone()),
                })
                .collect(),
        ),
    ];
    encode(kind, columns)
}

/// Encodes metric samples as one Parquet file.
pub fn encode_metrics(rows: &[&LakeMetricRow]) -> Result<Vec<u8>, EncodeError> {
    let columns = vec![
        text(rows, |r| r.node.as_str()),
        text(rows, |r| r.name.as_str()),
        text(rows, |r| r.labels.as_str()),
        Column::Int64(rows.iter().map(|r| millis(r.time)).collect()),
        Column::Double(rows.iter().map(|r| r.value).collect()),
    ];
    encode(FileKind::Metrics, columns)
}

fn encode(kind: FileKind, columns: Vec<Column>) -> Result<Vec<u8>, EncodeError> {
    let schema = parse_message_type(&schema(kind)).map_err(failed("schema"))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(concat!("edgefleet-server ", env!("CARGO_PKG_VERSION")).to_owned())
        .build();
    let mut writer = SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(properties))
        .map_err(failed("file header"))?;
    let mut row_group = writer.next_row_group().map_err(failed("row group"))?;
    for (index, column) in columns.into_iter().enumerate() {
        let what = format!("column {index}");
        let Some(mut column_writer) = row_group.next_column().map_err(failed(what.clone()))? else {
            return Err(EncodeError {
                what,
                source: parquet::errors::ParquetError::General(
                    "the schema has fewer columns than the rows".into(),
                ),
            });
        };
        match (column_writer.untyped(), &column) {
            (ColumnWriter::ByteArrayColumnWriter(w), Column::Bytes(values)) => {
                w.write_batch(values, None, None).map(drop)
            }
            (ColumnWriter::Int64ColumnWriter(w), Column::Int64(values)) => {
                w.write_batch(values, None, None).map(drop)
            }
            (ColumnWriter::DoubleColumnWriter(w), Column::Double(values)) => {
                w.write_batch(values, None, None).map(drop)
            }
            _ => Err(parquet::errors::ParquetError::General(
                "the column's type differs from the schema".into(),
            )),
        }
        .map_err(failed(what.clone()))?;
        column_writer.close().map_err(failed(what))?;
    }
    row_group.close().map_err(failed("row group"))?;
    writer.into_inner().map_err(failed("footer"))
}

#[cfg(test)]
pub mod tests {
    //! Round trips through `SerializedFileReader`, and a reader other tests use.

    use bytes::Bytes;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::{Field, Row};
    use time::macros::datetime;

    use super::*;

    /// Every row of a Parquet file, with the file's compression of its first column.
    pub fn read(file: &[u8]) -> (Vec<Row>, Compression) {
        let reader = SerializedFileReader::new(Bytes::copy_from_slice(file)).unwrap();
        let compression = reader.metadata().row_group(0).column(0).compression();
        let rows = reader
            .get_row_iter(None)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (rows, compression)
    }

    fn fields(row: &Row) -> Vec<(String, Field)> {
        row.get_column_iter()
            .map(|(name, field)| (name.clone(), field.clone()))
            .collect()
    }

    fn record(id: u64, payload: RecordPayload) -> LakeRecordRow {
        LakeRecordRow {
            id,
            node: format!("node-{id}"),
            stream: "readings".into(),
            deployment: "sensors".into(),
            seq: id * 10,
            time: datetime!(2024-03-01 12:00:00.123456 UTC),
            received_at: datetime!(1969-12-31 23:59:59.9995 UTC),
            payload,
        }
    }

    #[test]
    fn json_records_round_trip() {
        let rows = [
            record(1, RecordPayload::Json(r#"{"t": 21.5}"#.into())),
            record(2, RecordPayload::Json("[1,2,\"ü\"]".into())),
        ];
        let file = encode_records(FileKind::JsonRecords, &rows.iter().collect::<Vec<_>>()).unwrap();
        let (read_rows, compression) = read(&file);
        assert_eq!(compression, Compression::SNAPPY);
        assert_eq!(read_rows.len(), 2);
        for (row, expected) in read_rows.iter().zip(&rows) {
            let RecordPayload::Json(data) = &expected.payload else {
                unreachable!()
            };
            assert_eq!(
                fields(row),
                [
                    ("node".into(), Field::Str(expected.node.clone())),
                    ("stream".into(), Field::Str("readings".into())),
                    ("deployment".into(), Field::Str("sensors".into())),
                    ("seq".into(), Field::Long(expected.seq as i64)),
                    ("time".into(), Field::TimestampMillis(1_709_294_400_123)),
                    // Floor, not truncation toward zero: -0.5 ms is -1 ms.
                    ("received_at".into(), Field::TimestampMillis(-1)),
                    ("kind".into(), Field::Str("json".into())),
                    ("data".into(), Field::Str(data.clone())),
                ]
            );
        }
    }

    #[test]
    fn bytes_records_round_trip() {
        let rows = [
            record(1, RecordPayload::Bytes(vec![0, 159, 146, 150, 255])),
            record(2, RecordPayload::Bytes(vec![])),
        ];
        let file =
            encode_records(FileKind::BytesRecords, &rows.iter().collect::<Vec<_>>()).unwrap();
        let (read_rows, _) = read(&file);
        let data: Vec<_> = read_rows
            .iter()
            .map(|row| {
                let fields = fields(row);
                assert_eq!(fields[6].1, Field::Str("bytes".into()));
                match &fields[7].1 {
                    Field::Bytes(bytes) => bytes.data().to_vec(),
                    other => panic!("data is binary, not {other:?}"),
                }
            })
            .collect();
        assert_eq!(data, [vec![0, 159, 146, 150, 255], vec![]]);
    }

    #[test]
    fn metrics_round_trip() {
        let rows: Vec<LakeMetricRow> = (0..1000)
            .map(|i| LakeMetricRow {
                id: i,
                node: format!("n{}", i % 7),
                name: "cpu.used_percent".into(),
                labels: format!(r#"{{"core":"{}"}}"#, i % 4),
                time: datetime!(2024-03-01 00:00 UTC) + time::Duration::seconds(i as i64),
                value: if i == 3 { f64::NAN } else { i as f64 / 3.0 },
            })
            .collect();
        let file = encode_metrics(&rows.iter().collect::<Vec<_>>()).unwrap();
        let (read_rows, _) = read(&file);
        assert_eq!(read_rows.len(), rows.len());
        for (row, expected) in read_rows.iter().zip(&rows) {
            let fields = fields(row);
            assert_eq!(fields[0].1, Field::Str(expected.node.clone()));
            assert_eq!(fields[1].1, Field::Str(expected.name.clone()));
            assert_eq!(fields[2].1, Field::Str(expected.labels.clone()));
            assert_eq!(fields[3].1, Field::TimestampMillis(millis(expected.time)));
            match fields[4].1 {
                Field::Double(value) if expected.value.is_nan() => assert!(value.is_nan()),
                Field::Double(value) => assert_eq!(value, expected.value),
                ref other => panic!("value is a double, not {other:?}"),
            }
        }
    }

    #[test]
    fn empty_file_is_valid() {
        let file = encode_metrics(&[]).unwrap();
        assert!(read(&file).0.is_empty());
    }
}
