"""kcmail: keeps Keycloak realms' SMTP settings equal to MailConfig resources, with XOAUTH2 first."""

__version__ = "0.1.0"
