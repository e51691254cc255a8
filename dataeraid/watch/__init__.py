"""Watch folders: a folder whose complete files are uploaded by themselves."""
