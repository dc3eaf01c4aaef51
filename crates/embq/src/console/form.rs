//! Posted forms, parsed by hand so repeated names (a selection's ticked boxes) are kept.

use super::PageError;

/// A posted form: its fields in order, repeated names kept.
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Parses an `application/x-www-form-urlencoded` body.
    pub fn parse(body: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(body).into_owned().collect())
    }
    /// The first value of `name`.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// Every `id` field and every id of an `ids` list (comma-separated).
    pub fn ids(&self) -> Result<Vec<i64>, PageError> {
        let mut ids = Vec::new();
        for (k, v) in &self.0 {
            let parts: Vec<&str> = match k.as_str() {
                "id" => vec![v.as_str()],
                "ids" => v.split(',').filter(|p| !p.is_empty()).collect(),
                _ => continue,
            };
            for p in parts {
                ids.push(p.trim().parse().map_err(|_| PageError::Bad(format!("job id {p:?} is not a number")))?);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_boxes_and_lists_and_bad_ones_are_refused() {
        let f = Fields::parse(b"id=3&id=1&ids=7%2C3&csrf=x");
        assert_eq!(f.ids().ok(), Some(vec![1, 3, 7]));
        assert_eq!(f.one("csrf"), Some("x"));
        assert!(Fields::parse(b"id=1%3B+DROP").ids().is_err());
    }
}
