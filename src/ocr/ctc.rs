//! Greedy CTC decoding: the most likely class per time step, repeats collapsed, blanks dropped.

use ndarray::ArrayView2;

/// The classes a recogniser predicts: index 0 is the CTC blank, index `i` (1-based) is
/// `symbols[i - 1]`.
#[derive(Debug, Clone)]
pub struct Alphabet {
    symbols: Vec<String>,
}

impl Alphabet {
    /// The tutorial's recogniser (deep-text-recognition-benchmark, 37 classes): `0-9a-z`.
    pub fn tutorial() -> Alphabet {
        Alphabet {
            symbols: "0123456789abcdefghijklmnopqrstuvwxyz"
                .chars()
                .map(String::from)
                .collect(),
        }
    }

    /// PaddleOCR's dictionary as stored in the recogniser's ONNX metadata key `character`
    /// (one symbol per line), with the space class PaddleOCR appends at the end.
    pub fn paddle(character: &str) -> Alphabet {
        let mut symbols: Vec<String> = character.lines().map(str::to_string).collect();
        symbols.push(" ".into());
        Alphabet { symbols }
    }

    /// Number of classes including the blank.
    pub fn classes(&self) -> usize {
        self.symbols.len() + 1
    }

    fn symbol(&self, class: usize) -> &str {
        class
            .checked_sub(1)
            .and_then(|i| self.symbols.get(i))
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// Decodes one sequence of per-step scores `[steps, classes]`. With `probabilities` the scores
/// are already softmaxed (PaddleOCR); otherwise they are logits and are softmaxed per step for
/// the confidence. Returns the text and the mean probability of the kept steps (0 when none).
pub fn greedy_decode(
    scores: ArrayView2<f32>,
    alphabet: &Alphabet,
    probabilities: bool,
) -> (String, f32) {
    let mut text = String::new();
    let mut prev = usize::MAX;
    let (mut sum, mut kept) = (0.0f32, 0usize);
    for row in scores.rows() {
        let (mut idx, mut best) = (0usize, f32::NEG_INFINITY);
        for (i, &v) in row.iter().enumerate() {
            if v > best {
                best = v;
                idx = i;
            }
        }
        let prob = if probabilities {
            best
        } else {
            let denom: f32 = row.iter().map(|&v| (v - best).exp()).sum();
            1.0 / denom
        };
        if idx != prev && idx != 0 {
            text.push_str(alphabet.symbol(idx));
            sum += prob;
            kept += 1;
        }
        prev = idx;
    }
    let score = if kept == 0 { 0.0 } else { sum / kept as f32 };
    (text, score)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn one_hot(classes: usize, seq: &[usize]) -> Array2<f32> {
        let mut a = Array2::from_elem((seq.len(), classes), 0.0);
        for (t, &c) in seq.iter().enumerate() {
            a[[t, c]] = 1.0;
        }
        a
    }

    #[test]
    fn collapses_repeats_and_drops_blanks() {
        let abc = Alphabet::tutorial();
        // "s t t _ o o _ o p" → "stoop": the blank separates the two o's.
        let s = 1 + 10 + 18;
        let t = 1 + 10 + 19;
        let o = 1 + 10 + 14;
        let p = 1 + 10 + 15;
        let scores = one_hot(abc.classes(), &[s, t, t, 0, o, o, 0, o, p, 0]);
        let (text, score) = greedy_decode(scores.view(), &abc, true);
        assert_eq!(text, "stoop");
        assert_eq!(score, 1.0);
        let (empty, score) = greedy_decode(one_hot(37, &[0, 0]).view(), &abc, true);
        assert_eq!((empty.as_str(), score), ("", 0.0));
    }

    #[test]
    fn logits_get_softmax_confidence() {
        let abc = Alphabet::tutorial();
        let mut logits = Array2::<f32>::zeros((1, 37));
        logits[[0, 1]] = (36.0f32).ln() + 2.0f32.ln(); // p = 72 / (72 + 36) = 2/3
        let (text, score) = greedy_decode(logits.view(), &abc, false);
        assert_eq!(text, "0");
        assert!((score - 2.0 / 3.0).abs() < 1e-5, "{score}");
    }

    #[test]
    fn paddle_dictionary_appends_space() {
        let a = Alphabet::paddle("a\nb\nc");
        assert_eq!(a.classes(), 5);
        let (text, _) = greedy_decode(one_hot(5, &[1, 4, 3]).view(), &a, true);
        assert_eq!(text, "a c");
    }
}
