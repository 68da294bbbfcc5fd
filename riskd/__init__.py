"""riskd: the account-risk daemon for trading platforms on PostgreSQL."""

__version__ = "0.2.0"
