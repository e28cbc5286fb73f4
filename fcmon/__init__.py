"""fcmon: health-check daemon for FairCom servers."""

__version__ = "0.2.0"
