//! A growable list stored in fixed-size chunks: growing never copies more
//! than one chunk, so a capture's connection table does not briefly need
//! twice its size (as a `Vec` does when it reallocates). The first chunk
//! grows as a `Vec` does, so a small list (a sweep's few finished
//! connections) takes little memory.

/// Items per chunk.
const CHUNK: usize = 4096;

/// A `Vec`-like list of chunks.
#[derive(Debug)]
pub struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self { chunks: Vec::new(), len: 0 }
    }
}

impl<T> Chunked<T> {
    /// Items stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends an item.
    pub fn push(&mut self, item: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(item),
            None => self.chunks.push(vec![item]),
            Some(_) => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(item);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// The items in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The items in order, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }
}

impl<T> IntoIterator for Chunked<T> {
    type Item = T;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<T>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

impl<'a, T> IntoIterator for &'a Chunked<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Vec<T>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.chunks.iter().flatten()
    }
}

impl<T> std::ops::Index<usize> for Chunked<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> std::ops::IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_vec() {
        let mut c = Chunked::default();
        for i in 0..(CHUNK * 2 + 5) {
            c.push(i);
        }
        assert_eq!(c.len(), CHUNK * 2 + 5);
        assert_eq!(c[CHUNK + 3], CHUNK + 3);
        c[7] = 70;
        assert_eq!(c.iter().copied().take(8).last(), Some(70));
        let all: Vec<usize> = c.into_iter().collect();
        assert_eq!(all.len(), CHUNK * 2 + 5);
        assert_eq!(all[CHUNK * 2 + 4], CHUNK * 2 + 4);
    }

    #[test]
    fn a_short_list_takes_what_it_holds() {
        let mut c = Chunked::default();
        for i in 0..3 {
            c.push(i);
        }
        assert!(c.chunks[0].capacity() < 16, "{}", c.chunks[0].capacity());
        for i in 3..(CHUNK + 1) {
            c.push(i);
        }
        assert_eq!(c.chunks[0].capacity(), CHUNK);
        assert_eq!(c.chunks[1].capacity(), CHUNK);
        assert_eq!(c[CHUNK], CHUNK);
    }
}
