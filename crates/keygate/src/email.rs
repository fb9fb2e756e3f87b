//! Key owners' contact addresses and the email outbox, managed through [`Keygate`]: emailed
//! events (see [`keygate_core::email::EMAILED`]) about an owner's keys are queued for its
//! contacts in the event's own transaction, and `keygate serve` sends them over SMTP.

use keygate_core::email::{EmailDelivery, MAX_CONTACTS, check_address};
use keygate_core::record::MAX_OWNER_CHARS;
use keygate_core::{Audit, Timestamp};
use keygate_store::Attempt;

use crate::Keygate;
use crate::error::Error;

impl Keygate {
    /// Sets the contact addresses of `owner` (the `owner` of keys), replacing any; an empty
    /// list removes them. Audited as `owner.updated`.
    pub async fn set_owner_emails(
        &self,
        owner: &str,
        emails: &[String],
        audit: &Audit,
    ) -> Result<Vec<String>, Error> {
        let invalid = |field: &'static str, message: &str| Error::Invalid {
            field,
            message: message.to_owned(),
        };
        let owner = owner.trim();
        if owner.is_empty()
            || owner.chars().count() > MAX_OWNER_CHARS
            || owner.chars().any(char::is_control)
        {
            return Err(invalid(
                "owner",
                "1 to 200 characters, no control characters",
            ));
        }
        let mut checked: Vec<String> = Vec::with_capacity(emails.len());
        for email in emails {
            let email = check_address(email).map_err(|why| invalid("email", why))?;
            if !checked.contains(&email) {
                checked.push(email);
            }
        }
        if checked.len() > MAX_CONTACTS {
            return Err(invalid("email", "at most 20 addresses"));
        }
        self.store()
            .set_owner(owner, &checked, self.now(), audit)
            .await
            .map_err(Error::store("set the owner's contacts"))?;
        Ok(checked)
    }

    /// The contact addresses of `owner`.
    pub async fn owner_emails(&self, owner: &str) -> Result<Vec<String>, Error> {
        self.store()
            .owner_emails(owner)
            .await
            .map_err(Error::store("read the owner's contacts"))
    }

    /// Pending emails due at `now`, oldest first, at most `limit`: the sender's next batch.
    pub async fn due_emails(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<EmailDelivery>, Error> {
        self.store()
            .due_emails(now, limit)
            .await
            .map_err(Error::store("read the email outbox"))
    }

    /// Records the outcome of an attempt at email `id`.
    pub async fn finish_email(&self, id: i64, attempt: &Attempt) -> Result<(), Error> {
        self.store()
            .finish_email(id, attempt)
            .await
            .map_err(Error::store("record the email attempt"))
    }

    /// The latest emails, newest first.
    pub async fn emails(&self, limit: u32) -> Result<Vec<EmailDelivery>, Error> {
        self.store()
            .list_emails(limit)
            .await
            .map_err(Error::store("read the email log"))
    }
}
