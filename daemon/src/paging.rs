//! Pages of a list: which slice of a sorted list an answer holds, and the
//! opaque cursor that names the next one. Used by the index, the jobs and
//! the API alike; reading `?limit=`/`?cursor=` from a request is the API's
//! business (`api::extract::page`).

use serde::Serialize;

/// Default and maximum page sizes.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// A slice of a list: skip `offset`, take `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Default for Page {
    /// The first page, of the default size.
    fn default() -> Self {
        Self {
            offset: 0,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl Page {
    /// One page of `items`, as `{"items", "next_cursor", "total"}`.
    pub fn of<T: Serialize>(self, items: Vec<T>) -> Paged<T> {
        let (total, next_cursor) = self.bounds(items.len());
        Paged {
            items: items.into_iter().skip(self.offset).take(self.limit).collect(),
            next_cursor,
            total,
        }
    }

    /// [`Self::of`] over references, cloning only the page's items (a
    /// listing sorts references to a large index, then copies 100).
    pub fn of_cloned<T: Serialize + Clone>(self, items: &[&T]) -> Paged<T> {
        self.of_mapped(items, |t| (*t).clone())
    }

    /// [`Self::of`] over any items, making only the page's into `T` (a
    /// listing sorts compact index entries, then decodes 100).
    pub fn of_mapped<I, T: Serialize>(self, items: &[I], f: impl Fn(&I) -> T) -> Paged<T> {
        let (total, next_cursor) = self.bounds(items.len());
        Paged {
            items: items.iter().skip(self.offset).take(self.limit).map(f).collect(),
            next_cursor,
            total,
        }
    }

    /// The cursor of the page after this one in a list of `total` items
    /// (`None` when this is the last), for lists paged outside memory.
    pub fn next_cursor(self, total: usize) -> Option<String> {
        self.bounds(total).1
    }

    fn bounds(self, total: usize) -> (usize, Option<String>) {
        let end = (self.offset + self.limit).min(total);
        (total, (end < total).then(|| encode_cursor(end)))
    }
}

/// A page of a list.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
    pub total: usize,
}

// Cursors are opaque to clients: "o" and the offset in base 36.
fn encode_cursor(offset: usize) -> String {
    let mut n = offset;
    let mut digits = Vec::new();
    loop {
        digits.push(std::char::from_digit((n % 36) as u32, 36).expect("digit"));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.push('o');
    digits.iter().rev().collect()
}

impl Page {
    /// The offset a cursor names, if this daemon issued it.
    pub fn decode_cursor(c: &str) -> Option<usize> {
        decode_cursor(c)
    }
}

fn decode_cursor(c: &str) -> Option<usize> {
    let digits = c.strip_prefix('o')?;
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    usize::from_str_radix(digits, 36).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for n in [0, 1, 35, 36, 99_999] {
            assert_eq!(decode_cursor(&encode_cursor(n)), Some(n));
        }
        for bad in ["", "o", "x12", "o!!", "o1234567890123"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
        let page = Page { offset: 0, limit: 2 }.of(vec![1, 2, 3]);
        assert_eq!((page.items, page.total), (vec![1, 2], 3));
        let next = Page::decode_cursor(&page.next_cursor.unwrap()).unwrap();
        let page = Page {
            offset: next,
            limit: 2,
        }
        .of(vec![1, 2, 3]);
        assert_eq!((page.items, page.next_cursor), (vec![3], None));
    }
}
