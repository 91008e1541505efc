//! Walking a paged list: page tokens (HubSpot's `after`, many `cursor`s), next-page URLs (in
//! the body or a `Link: <…>; rel="next"` header) and offset/limit.
//!
//! A [`Pager`] sends one request per page and returns the page's records; its
//! [`PagerState`] is plain serializable data, so a connector can put it in a checkpoint and
//! resume the walk with [`Pager::resume`].
//!
//! Invariant: a pager ends only when the server says there is no next page (no token, no
//! next URL, or a short or empty offset page); a page token that repeats the previous one is
//! an error rather than an endless loop.

use reqwest::header::LINK;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::client::{HttpClient, Request, Response};
use crate::error::HttpError;

/// Where the next request carries the page token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPlacement {
    /// A query parameter of this name (`?after=…`).
    Query(String),
    /// A top-level field of this name in the JSON body (search endpoints that are POSTs).
    Body(String),
}

/// How a list is paged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paging {
    /// The answer holds the next page's token at a JSON pointer (`/paging/next/after`); no
    /// token means the last page.
    PageToken {
        token_at: String,
        placement: TokenPlacement,
    },
    /// The answer names the next page's URL at a JSON pointer, or (with `None`) in a
    /// `Link` header with `rel="next"`.
    NextUrl { url_at: Option<String> },
    /// Query parameters for the offset and the page size; a page with fewer records than
    /// `page_size` is the last.
    Offset {
        offset_param: String,
        limit_param: String,
        page_size: u64,
    },
}

/// Where a walk stands: what the next request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "at", content = "value")]
pub enum PagerState {
    /// The first page is next.
    Start,
    /// The page with this token is next.
    Token(String),
    /// The page at this URL is next.
    Url(String),
    /// The page at this offset is next.
    Offset(u64),
    /// There are no more pages.
    Done,
}

impl PagerState {
    /// Where a full read resumes, from its checkpoint (written by [`Pager::next_records`]): a
    /// missing or `null` checkpoint starts at the first page; one without a `page` state is
    /// an error.
    pub fn from_checkpoint(checkpoint: Option<&Value>) -> Result<PagerState, serde_json::Error> {
        match checkpoint {
            None | Some(Value::Null) => Ok(PagerState::Start),
            Some(checkpoint) => serde_json::from_value(checkpoint["page"].clone()),
        }
    }
}

/// One page: its records and the whole answer (for totals and other metadata).
#[derive(Debug, Clone)]
pub struct Page {
    pub records: Vec<Value>,
    pub body: Value,
}

/// A walk through a paged list.
#[derive(Debug, Clone)]
pub struct Pager {
    template: Request,
    paging: Paging,
    records_at: String,
    state: PagerState,
}

impl Pager {
    /// Walks the list that `template` asks for, from the first page. The records of each page
    /// are the array at the JSON pointer `records_at` (`/results`; `""` for a top-level array).
    pub fn new(template: Request, paging: Paging, records_at: impl Into<String>) -> Self {
        Self::resume(template, paging, records_at, PagerState::Start)
    }

    /// Walks on from `state` (taken from [`Pager::state`] earlier).
    pub fn resume(
        template: Request,
        paging: Paging,
        records_at: impl Into<String>,
        state: PagerState,
    ) -> Self {
        Self {
            template,
            paging,
            records_at: records_at.into(),
            state,
        }
    }

    /// Where the walk stands: what the next call of [`Pager::next_page`] fetches.
    pub fn state(&self) -> &PagerState {
        &self.state
    }

    /// The next page that holds records, with the checkpoint of a full read after it,
    /// `{"page": <state>}` (read back by [`PagerState::from_checkpoint`]); `None` when the
    /// list is over. Pages without records are passed over.
    pub async fn next_records(
        &mut self,
        client: &HttpClient,
    ) -> Result<Option<(Vec<Value>, Value)>, HttpError> {
        while let Some(page) = self.next_page(client).await? {
            if !page.records.is_empty() {
                return Ok(Some((page.records, json!({ "page": self.state }))));
            }
        }
        Ok(None)
    }

    /// Fetches the next page, or `None` when the list is over.
    pub async fn next_page(&mut self, client: &HttpClient) -> Result<Option<Page>, HttpError> {
        let request = match self.request() {
            Some(request) => request,
            None => return Ok(None),
        };
        let response = client.send(&request).await?;
        let body: Value = if response.body.is_empty() {
            Value::Null
        } else {
            response.json()?
        };
        let records = match body.pointer(&self.records_at) {
            Some(Value::Array(records)) => records.clone(),
            Some(Value::Null) | None if matches!(body, Value::Object(_)) => Vec::new(),
            _ => {
                return Err(HttpError::Decode {
                    request: request.label(),
                    detail: format!(
                        "expected an array of records at `{}` in the answer",
                        self.records_at
                    ),
                })
            }
        };
        self.state = self.next_state(&response, &body, records.len())?;
        Ok(Some(Page { records, body }))
    }

    fn request(&self) -> Option<Request> {
        let mut request = self.template.clone();
        match (&self.state, &self.paging) {
            (PagerState::Done, _) => return None,
            (PagerState::Start, Paging::Offset { .. }) => {
                return Some(self.offset_request(request, 0))
            }
            (PagerState::Start, _) => {}
            (PagerState::Token(token), Paging::PageToken { placement, .. }) => match placement {
                TokenPlacement::Query(name) => request = request.set_query(name, token),
                TokenPlacement::Body(name) => {
                    if request.body().is_none() {
                        request = request.json(Value::Object(Default::default()));
                    }
                    if let Some(Value::Object(body)) = request.body_mut() {
                        body.insert(name.clone(), Value::String(token.clone()));
                    }
                }
            },
            // The next URL carries its own query; the template's would repeat it.
            (PagerState::Url(url), _) => request = request.at(url.clone()),
            (PagerState::Offset(offset), _) => return Some(self.offset_request(request, *offset)),
            // A state from another kind of paging (a checkpoint from an older version, say):
            // start over, which is safe because reads are idempotent.
            _ => {}
        }
        Some(request)
    }

    fn offset_request(&self, request: Request, offset: u64) -> Request {
        match &self.paging {
            Paging::Offset {
                offset_param,
                limit_param,
                page_size,
            } => request
                .set_query(offset_param, offset)
                .set_query(limit_param, page_size),
            _ => request,
        }
    }

    fn next_state(
        &self,
        response: &Response,
        body: &Value,
        records: usize,
    ) -> Result<PagerState, HttpError> {
        Ok(match &self.paging {
            Paging::PageToken { token_at, .. } => {
                let token = match body.pointer(token_at) {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                match token {
                    None => PagerState::Done,
                    Some(token) if self.state == PagerState::Token(token.clone()) => {
                        return Err(HttpError::Decode {
                            request: format!("paging with `{token_at}`"),
                            detail: format!(
                                "the server answered the same next-page token `{token}` twice; \
                                 stopping rather than reading the same page forever"
                            ),
                        })
                    }
                    Some(token) => PagerState::Token(token),
                }
            }
            Paging::NextUrl { url_at } => {
                let next = match url_at {
                    Some(pointer) => body
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                    None => response
                        .headers
                        .get_all(LINK)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .find_map(next_link),
                };
                match next {
                    Some(url) if self.state == PagerState::Url(url.clone()) => {
                        return Err(HttpError::Decode {
                            request: "paging by next-page URL".into(),
                            detail: "the server named the same next page twice".into(),
                        })
                    }
                    Some(url) => PagerState::Url(url),
                    None => PagerState::Done,
                }
            }
            Paging::Offset { page_size, .. } => {
                let offset = match self.state {
                    PagerState::Offset(offset) => offset,
                    _ => 0,
                };
                if (records as u64) < *page_size || records == 0 {
                    PagerState::Done
                } else {
                    PagerState::Offset(offset + records as u64)
                }
            }
        })
    }
}

/// The URL of the `rel="next"` link in a `Link` header value (RFC 8288), if any.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
        });
        is_next.then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_are_found_among_others() {
        let header = r#"<https://a/x?page=1>; rel="prev", <https://a/x?page=3>; rel="next""#;
        assert_eq!(next_link(header).as_deref(), Some("https://a/x?page=3"));
        assert_eq!(next_link(r#"<https://a/x?page=1>; rel="prev""#), None);
    }

    #[test]
    fn states_serialize_for_checkpoints() {
        let state = PagerState::Token("abc".into());
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json, serde_json::json!({"at": "token", "value": "abc"}));
        assert_eq!(serde_json::from_value::<PagerState>(json).unwrap(), state);
    }

    #[test]
    fn full_read_checkpoints_hold_the_state_under_page() {
        let checkpoint = serde_json::json!({"page": {"at": "offset", "value": 200}});
        assert_eq!(
            PagerState::from_checkpoint(Some(&checkpoint)).unwrap(),
            PagerState::Offset(200)
        );
        assert_eq!(
            PagerState::from_checkpoint(None).unwrap(),
            PagerState::Start
        );
        assert_eq!(
            PagerState::from_checkpoint(Some(&Value::Null)).unwrap(),
            PagerState::Start
        );
        let other = serde_json::json!({"cursor": "x", "key": [1]});
        assert!(PagerState::from_checkpoint(Some(&other)).is_err());
    }
}
