"""Watch folders: files that became complete in a folder are uploaded by themselves, exactly once."""
