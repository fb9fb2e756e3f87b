//! Key owners' contact addresses and the email outbox, managed through [`Keygate`]: emailed
//! events (see [`keygate_core::email::EMAILED`]) about an owner's keys are queued for its
//! contacts and for the operators of the event's type (see
//! [`KeygateBuilder::email_routing`](crate::KeygateBuilder::email_routing)) in the event's own
//! transaction, and `keygate serve` sends them over SMTP.

use keygate_core::email::{Contacts, EmailDelivery, MAX_CONTACTS, check_address};
use keygate_core::{Audit, Timestamp};
use keygate_store::{Attempt, EmailPage, EmailQuery};

use crate::Keygate;
use crate::error::Error;

impl Keygate {
    /// Sets the contact addresses of `owner` (the `owner` of keys), replacing any; an empty
    /// list removes them. Audited as `owner.updated`.
    /// With `digest`, the owner's notices are collected into one email a day per address.
    pub async fn set_owner_emails(
        &self,
        owner: &str,
        emails: &[String],
        digest: bool,
        audit: &Audit,
    ) -> Result<Contacts, Error> {
        let invalid = |field: &'static str, message: &str| Error::Invalid {
            field,
            message: message.to_owned(),
        };
        // The same rule as a key's owner (core's), so contacts name owners as keys do.
        let owner = keygate_core::record::check_owner(owner.to_owned())?;
        let owner = owner.as_str();
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
        let contacts = Contacts {
            emails: checked,
            digest,
        };
        self.store()
            .set_owner(owner, &contacts, self.now(), audit)
            .await
            .map_err(Error::store("set the owner's contacts"))?;
        Ok(contacts)
    }

    /// The contacts of `owner`.
    pub async fn owner_contacts(&self, owner: &str) -> Result<Contacts, Error> {
        self.store()
            .owner_contacts(owner)
            .await
            .map_err(Error::store("read the owner's contacts"))
    }

    /// Digest notices due at `now`, by recipient (at most `limit`): each recipient's go as
    /// one email.
    pub async fn due_digest_notices(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<EmailDelivery>, Error> {
        self.store()
            .due_digest_notices(now, limit)
            .await
            .map_err(Error::store("read the email outbox"))
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

    /// Claims email (or digest notice) `id` for this sender until `until`, right before it is
    /// sent: `false` if another node claimed it first or it is no longer due. Several nodes
    /// then send each email once; a sender that dies leaves it due again at `until`.
    pub async fn claim_email(
        &self,
        id: i64,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, Error> {
        self.store()
            .claim_email(id, now, until)
            .await
            .map_err(Error::store("claim the email"))
    }

    /// Records the outcome of an attempt at email `id`.
    pub async fn finish_email(&self, id: i64, attempt: &Attempt) -> Result<(), Error> {
        self.store()
            .finish_email(id, attempt)
            .await
            .map_err(Error::store("record the email attempt"))
    }

    /// The email log: emails matching `query`, newest first, one page at a time.
    pub async fn emails(&self, query: &EmailQuery) -> Result<EmailPage, Error> {
        self.store()
            .list_emails(query)
            .await
            .map_err(Error::store("read the email log"))
    }
}
