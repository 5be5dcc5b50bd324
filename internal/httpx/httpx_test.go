package httpx

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestDecodeStrict(t *testing.T) {
	type v struct {
		A int `json:"a"`
	}
	tests := map[string]struct {
		in      string
		wantErr string
	}{
		"ok":            {`{"a":1}`, ""},
		"ok with space": {"{\"a\":1}\n ", ""},
		"unknown field": {`{"a":1,"b":2}`, "unknown field"},
		"trailing":      {`{"a":1}{"a":2}`, "trailing data"},
		"trailing junk": {`{"a":1} x`, "trailing data"},
		"empty":         {``, "EOF"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			var got v
			err := DecodeStrict([]byte(tt.in), &got)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("DecodeStrict(%q) = %v, want %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestReadBody(t *testing.T) {
	for name, tt := range map[string]struct {
		body     string
		wantCode int
	}{
		"within": {"12345", 0},
		"over":   {"123456", http.StatusRequestEntityTooLarge},
	} {
		t.Run(name, func(t *testing.T) {
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tt.body))
			b, err := ReadBody(w, r, 5)
			if tt.wantCode == 0 {
				if err != nil || string(b) != tt.body {
					t.Fatalf("ReadBody = %q, %v", b, err)
				}
				return
			}
			if !TooLarge(err) || w.Code != tt.wantCode || !strings.Contains(w.Body.String(), `"error"`) {
				t.Fatalf("ReadBody err=%v code=%d body=%s", err, w.Code, w.Body)
			}
		})
	}
}
