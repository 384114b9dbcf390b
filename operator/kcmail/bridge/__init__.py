"""The Google token bridge (``kcmail bridge``): an OAuth2 token endpoint Keycloak can use to send through Gmail.

Keycloak's SMTP token auth speaks only the client-credentials grant with a client secret; Google issues
Gmail tokens for a Workspace mailbox only through the JWT-bearer grant (RFC 7523) of a service account with
domain-wide delegation, ``sub`` being the mailbox. The bridge answers Keycloak's request as a
client-credentials endpoint and makes Google's grant on its behalf, with Google's own library (google-auth).

- ``registry.py``: the clients Keycloak presents (id, secret digest), each tied to a service-account key and
  the one mailbox it may have a token for; read from a hand-written file, or from the registry Secret the
  operator keeps.
- ``enrolment.py``: the operator's side: the client credentials it derives for each MailConfig with
  ``googleServiceAccount``, and that MailConfig's entry in the registry Secret.
- ``google.py``: the grant, and the tokens kept per (key, mailbox) until shortly before they expire.
- ``server.py``: the HTTPS endpoint: request bounds, rate limits, OAuth2 error answers.
"""

# Google's token endpoint: the bridge's default, and where `kcmail probe` asks for a googleServiceAccount.
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
