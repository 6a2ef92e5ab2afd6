"""Static files of the web chat page (served by ``onethread.platforms.web``)."""
