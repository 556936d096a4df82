//! tools: the data, mx and bench command-line programs live in src/bin.
