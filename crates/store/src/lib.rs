//! Queues and their messages, in memory and on disk. Synchronous: the server decides where calls run.
