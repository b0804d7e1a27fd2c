package main

// shellwords.go splits StartProgramInGuest's `arguments` with POSIX shell word rules and no
// expansion (contract §2): blanks separate words; '…' is literal; "…" keeps everything except
// that a backslash escapes $ ` " \ and newline; an unquoted backslash escapes the next
// character (backslash-newline is removed). Operators such as && | > are ordinary words.

import "errors"

func splitWords(s string) ([]string, error) {
	var words []string
	var cur []rune
	inWord := false
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, string(cur))
				cur, inWord = nil, false
			}
		case c == '\\':
			if i+1 >= len(rs) {
				return nil, errors.New("trailing backslash")
			}
			i++
			if rs[i] != '\n' {
				cur = append(cur, rs[i])
				inWord = true
			}
		case c == '\'':
			inWord = true
			j := i + 1
			for j < len(rs) && rs[j] != '\'' {
				j++
			}
			if j >= len(rs) {
				return nil, errors.New("unterminated single quote")
			}
			cur = append(cur, rs[i+1:j]...)
			i = j
		case c == '"':
			inWord = true
			j := i + 1
			for ; j < len(rs) && rs[j] != '"'; j++ {
				if rs[j] == '\\' && j+1 < len(rs) {
					switch rs[j+1] {
					case '$', '`', '"', '\\':
						cur = append(cur, rs[j+1])
						j++
						continue
					case '\n':
						j++
						continue
					}
				}
				cur = append(cur, rs[j])
			}
			if j >= len(rs) {
				return nil, errors.New("unterminated double quote")
			}
			i = j
		default:
			cur = append(cur, c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, string(cur))
	}
	return words, nil
}
