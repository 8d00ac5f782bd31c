//! Tabular data sets: loading, standardising, splitting and partitioning
//! across agents (IID or by a Dirichlet draw over labels, the usual way to
//! simulate non-IID federated data).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Gamma};

use crate::ModelError;

/// Where the label is in a CSV row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelColumn {
    /// A header name (the file must have a header).
    Name(String),
    /// A zero-based column index.
    Index(usize),
    /// The last column.
    Last,
}

/// Rows of `f32` features with integer class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Row-major, `len() * n_features` values.
    pub features: Vec<f32>,
    pub n_features: usize,
    pub labels: Vec<u32>,
    pub classes: usize,
}

impl Dataset {
    /// Builds a data set, checking sizes and labels.
    pub fn new(
        features: Vec<f32>,
        n_features: usize,
        labels: Vec<u32>,
        classes: usize,
    ) -> Result<Self, ModelError> {
        if labels.is_empty() || n_features == 0 {
            return Err(ModelError::EmptyDataset);
        }
        if features.len() != labels.len() * n_features {
            return Err(ModelError::BadRow {
                row: 0,
                reason: format!(
                    "{} feature values for {} rows of {n_features}",
                    features.len(),
                    labels.len()
                ),
            });
        }
        if let Some((row, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= classes)
        {
            return Err(ModelError::LabelOutOfRange {
                row,
                label: label.into(),
                classes,
            });
        }
        Ok(Self {
            features,
            n_features,
            labels,
            classes,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.n_features..(i + 1) * self.n_features]
    }

    /// Reads a CSV of numbers. `classes` fixes the label range; without it,
    /// the range is one more than the largest label seen.
    pub fn from_csv_reader<R: Read>(
        reader: R,
        has_header: bool,
        label: &LabelColumn,
        classes: Option<usize>,
    ) -> Result<Self, ModelError> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(has_header)
            .trim(csv::Trim::All)
            .from_reader(reader);
        let label_index = match label {
            LabelColumn::Name(name) => {
                if !has_header {
                    return Err(ModelError::NoLabelColumn(name.clone()));
                }
                Some(
                    rdr.headers()?
                        .iter()
                        .position(|h| h == name)
                        .ok_or_else(|| ModelError::NoLabelColumn(name.clone()))?,
                )
            }
            LabelColumn::Index(i) => Some(*i),
            LabelColumn::Last => None,
        };
        let mut features = Vec::new();
        let mut labels = Vec::new();
        let mut width = None;
        for (row, record) in rdr.records().enumerate() {
            let record = record?;
            let n = record.len();
            if *width.get_or_insert(n) != n || n < 2 {
                return Err(ModelError::BadRow {
                    row,
                    reason: format!("{n} columns, expected {}", width.unwrap_or(n).max(2)),
                });
            }
            let li = label_index.unwrap_or(n - 1);
            if li >= n {
                return Err(ModelError::BadRow {
                    row,
                    reason: format!("no column {li}"),
                });
            }
            for (i, field) in record.iter().enumerate() {
                let v: f64 = field.parse().map_err(|_| ModelError::BadRow {
                    row,
                    reason: format!("`{field}` is not a number"),
                })?;
                if !v.is_finite() {
                    return Err(ModelError::BadRow {
                        row,
                        reason: format!("`{field}` is not finite"),
                    });
                }
                if i == li {
                    if v.fract() != 0.0 || v < 0.0 || v > f64::from(u32::MAX) {
                        return Err(ModelError::LabelOutOfRange {
                            row,
                            label: v as i64,
                            classes: classes.unwrap_or(0),
                        });
                    }
                    labels.push(v as u32);
                } else {
                    features.push(v as f32);
                }
            }
        }
        let n_features = width.unwrap_or(1) - 1;
        let classes = classes.unwrap_or_else(|| labels.iter().max().map_or(0, |m| *m as usize + 1));
        Self::new(features, n_features, labels, classes)
    }

    /// Reads a CSV file with a header naming the label column.
    pub fn from_csv_path(
        path: &Path,
        label: &LabelColumn,
        classes: Option<usize>,
    ) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let has_header = !matches!(label, LabelColumn::Index(_) | LabelColumn::Last)
            || first_line_is_header(path)?;
        Self::from_csv_reader(BufReader::new(file), has_header, label, classes)
    }

    /// The UCI optical digits (`digits.csv.gz`: 64 pixel counts 0..16, then
    /// the label), pixels scaled to [0, 1].
    pub fn digits(path: &Path) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut ds = Self::from_csv_reader(
            flate2::read::GzDecoder::new(file),
            false,
            &LabelColumn::Last,
            Some(10),
        )?;
        ds.features.iter_mut().for_each(|v| *v /= 16.0);
        Ok(ds)
    }

    /// Breast Cancer Wisconsin (Diagnostic): a `rows,features,names...`
    /// first line, then 30 features and the 0/1 label per row. Unscaled:
    /// fit a [`Standardizer`] on the training part.
    pub fn breast_cancer(path: &Path) -> Result<Self, ModelError> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let mut first = String::new();
        reader
            .read_line(&mut first)
            .map_err(|e| ModelError::io(path, e))?;
        Self::from_csv_reader(reader, false, &LabelColumn::Last, Some(2))
    }

    /// The rows at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut features = Vec::with_capacity(indices.len() * self.n_features);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            features.extend_from_slice(self.row(i));
            labels.push(self.labels[i]);
        }
        Self {
            features,
            n_features: self.n_features,
            labels,
            classes: self.classes,
        }
    }

    /// Shuffled split: `(train, test)` with `test_fraction` of the rows in test.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Self, Self) {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut StdRng::seed_from_u64(seed));
        let n_test = ((self.len() as f64) * test_fraction).round() as usize;
        (self.subset(&idx[n_test..]), self.subset(&idx[..n_test]))
    }

    /// `n` shards of (nearly) equal size, rows dealt at random.
    pub fn partition_iid(&self, n: usize, seed: u64) -> Vec<Self> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut StdRng::seed_from_u64(seed));
        (0..n)
            .map(|k| {
                let part: Vec<usize> = idx.iter().copied().skip(k).step_by(n.max(1)).collect();
                self.subset(&part)
            })
            .collect()
    }

    /// Non-IID shards: for each class, the share each agent gets is drawn
    /// from a symmetric Dirichlet(alpha); small alpha means skewed labels.
    /// Every shard keeps at least one row so that every agent can train.
    pub fn partition_dirichlet(
        &self,
        n: usize,
        alpha: f64,
        seed: u64,
    ) -> Result<Vec<Self>, ModelError> {
        let gamma = Gamma::new(alpha, 1.0)
            .map_err(|_| ModelError::BadHyperParameter("alpha must be > 0"))?;
        if n == 0 || n > self.len() {
            return Err(ModelError::BadHyperParameter(
                "number of shards must be in 1..=rows",
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut shards: Vec<Vec<usize>> = vec![Vec::new(); n];
        for class in 0..self.classes as u32 {
            let mut rows: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] == class)
                .collect();
            rows.shuffle(&mut rng);
            let draws: Vec<f64> = (0..n).map(|_| gamma.sample(&mut rng)).collect();
            let total: f64 = draws.iter().sum::<f64>().max(f64::MIN_POSITIVE);
            let mut start = 0;
            let mut acc = 0.0;
            for (k, d) in draws.iter().enumerate() {
                acc += d / total;
                let end = if k + 1 == n {
                    rows.len()
                } else {
                    ((acc * rows.len() as f64).round() as usize).min(rows.len())
                };
                shards[k].extend_from_slice(&rows[start..end.max(start)]);
                start = end.max(start);
            }
        }
        // Move a row into any empty shard from the largest one.
        for k in 0..n {
            if shards[k].is_empty() {
                let largest = (0..n).max_by_key(|&j| shards[j].len()).unwrap_or(0);
                if let Some(row) = shards[largest].pop() {
                    shards[k].push(row);
                }
            }
        }
        Ok(shards.iter().map(|s| self.subset(s)).collect())
    }

    /// Writes the data set as a CSV with a header: `x0..x{n-1}` and then the
    /// label column named `label_name`.
    pub fn write_csv(&self, path: &Path, label_name: &str) -> Result<(), ModelError> {
        let mut w = csv::Writer::from_path(path)?;
        let mut header: Vec<String> = (0..self.n_features).map(|i| format!("x{i}")).collect();
        header.push(label_name.to_owned());
        w.write_record(&header)?;
        for i in 0..self.len() {
            let mut rec: Vec<String> = self.row(i).iter().map(f32::to_string).collect();
            rec.push(self.labels[i].to_string());
            w.write_record(&rec)?;
        }
        w.flush().map_err(|e| ModelError::io(path, e))?;
        Ok(())
    }

    /// How many rows of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
}

fn first_line_is_header(path: &Path) -> Result<bool, ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut line = String::new();
    BufReader::new(file)
        .read_line(&mut line)
        .map_err(|e| ModelError::io(path, e))?;
    Ok(line.split(',').any(|f| f.trim().parse::<f64>().is_err()))
}

/// Per-feature z-scoring with statistics fitted on one data set (the
/// training part) and applied to others.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    pub fn fit(ds: &Dataset) -> Self {
        let n = ds.len().max(1) as f64;
        let mut mean = vec![0f64; ds.n_features];
        let mut sq = vec![0f64; ds.n_features];
        for i in 0..ds.len() {
            for (j, &v) in ds.row(i).iter().enumerate() {
                mean[j] += f64::from(v);
                sq[j] += f64::from(v) * f64::from(v);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let var = (s / n - m * m).max(0.0);
                if var > 1e-12 { var.sqrt() as f32 } else { 1.0 }
            })
            .collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    pub fn apply(&self, ds: &mut Dataset) {
        for (i, v) in ds.features.iter_mut().enumerate() {
            let j = i % ds.n_features;
            *v = (*v - self.mean[j]) / self.std[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
    }

    #[test]
    fn loads_the_real_data_sets() {
        let d = Dataset::digits(&data_dir().join("digits.csv.gz")).unwrap();
        assert_eq!((d.len(), d.n_features, d.classes), (1797, 64, 10));
        assert!(d.features.iter().all(|v| (0.0..=1.0).contains(v)));
        let b = Dataset::breast_cancer(&data_dir().join("breast_cancer.csv")).unwrap();
        assert_eq!((b.len(), b.n_features, b.classes), (569, 30, 2));
        assert_eq!(b.class_counts(), vec![212, 357]);
    }

    #[test]
    fn csv_by_label_name_and_bad_rows() {
        let csv = "a,y,b\n1,0,2\n3,1,4\n";
        let d =
            Dataset::from_csv_reader(csv.as_bytes(), true, &LabelColumn::Name("y".into()), None)
                .unwrap();
        assert_eq!(d.features, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.labels, vec![0, 1]);
        let err =
            Dataset::from_csv_reader(csv.as_bytes(), true, &LabelColumn::Name("z".into()), None);
        assert!(matches!(err, Err(ModelError::NoLabelColumn(_))));
        let err = Dataset::from_csv_reader(
            "a,y\n1,x\n".as_bytes(),
            true,
            &LabelColumn::Name("y".into()),
            None,
        );
        assert!(matches!(err, Err(ModelError::BadRow { row: 0, .. })));
        let err = Dataset::from_csv_reader(
            "a,y\n1,7\n".as_bytes(),
            true,
            &LabelColumn::Name("y".into()),
            Some(2),
        );
        assert!(matches!(
            err,
            Err(ModelError::LabelOutOfRange { label: 7, .. })
        ));
    }

    #[test]
    fn partitions_cover_every_row_once() {
        let d = Dataset::digits(&data_dir().join("digits.csv.gz")).unwrap();
        let iid = d.partition_iid(10, 1);
        assert_eq!(iid.iter().map(Dataset::len).sum::<usize>(), d.len());
        let non = d.partition_dirichlet(10, 0.5, 1).unwrap();
        assert_eq!(non.iter().map(Dataset::len).sum::<usize>(), d.len());
        assert!(non.iter().all(|s| !s.is_empty()));
        // Skewed: some shard misses at least one class entirely or nearly.
        let min_share = non
            .iter()
            .flat_map(|s| {
                s.class_counts()
                    .into_iter()
                    .map(move |c| c as f64 / s.len() as f64)
            })
            .fold(1.0, f64::min);
        assert!(min_share < 0.02);
    }

    proptest::proptest! {
        #[test]
        fn csv_reader_never_panics(s in "[0-9a-z,.\\-\n]{0,200}") {
            let _ = Dataset::from_csv_reader(s.as_bytes(), false, &LabelColumn::Last, None);
        }
    }
}
