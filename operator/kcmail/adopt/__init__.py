"""Adoption tools: ``kcmail audit`` reports what every realm's mail settings are and what is wrong with
them; ``kcmail export`` turns a realm's settings into the MailConfig and Secret template that reproduce
them, so that kcmail can take a realm over without changing how it sends mail.
"""
