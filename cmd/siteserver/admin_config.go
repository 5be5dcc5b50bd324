package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// How the admin commands find the NS: flags, then -data, then the environment, then the
// admin config file (connectionHelp says it to users). Each of the URL, the token and the
// CA comes whole from the first that gives any of it, so that a token file in the config
// file never mixes with a token from a flag.

// adminConfigFile is the admin config file, decoded strictly.
type adminConfigFile struct {
	NS        string `yaml:"ns"`
	TokenFile string `yaml:"token_file"`
	CAFile    string `yaml:"ca_file"`
	CASHA256  string `yaml:"ca_sha256"`
}

// connSource is what one place says of the connection; from names it in errors.
type connSource struct {
	from                                string
	url, token, tokenFile, ca, caSHA256 string
}

type adminFlags struct {
	url, token, tokenFile, ca, pin, data string
}

// connSources lists, best first, every place that gives connection settings.
func (f *adminFlags) connSources() ([]connSource, error) {
	out := []connSource{{from: "flag", url: f.url, token: f.token, tokenFile: f.tokenFile, ca: f.ca, caSHA256: f.pin}}
	if f.data != "" {
		out = append(out, connSource{from: "-data", url: "https://127.0.0.1:50443",
			tokenFile: filepath.Join(f.data, "ns", "admin.token"), ca: filepath.Join(f.data, "ns", "ca.crt")})
	}
	env := func(names ...string) string {
		for _, n := range names {
			if v := os.Getenv(n); v != "" {
				return v
			}
		}
		return ""
	}
	out = append(out, connSource{from: "environment", url: env("SITESERVER_NS", "SITESERVER_NS_URL"),
		token: env("SITESERVER_ADMIN_TOKEN"), tokenFile: env("SITESERVER_TOKEN_FILE"),
		ca: env("SITESERVER_CA", "SITESERVER_NS_CA"), caSHA256: env("SITESERVER_CA_SHA256")})
	file, err := loadAdminConfig()
	if err != nil {
		return nil, err
	}
	if file != nil {
		out = append(out, *file)
	}
	return out, nil
}

// loadAdminConfig reads the admin config file: the one SITESERVER_ADMIN_CONFIG names,
// which must exist, else ~/.config/siteserver/admin.yaml if there is one.
func loadAdminConfig() (*connSource, error) {
	path := os.Getenv("SITESERVER_ADMIN_CONFIG")
	named := path != ""
	if !named {
		dir, err := os.UserConfigDir()
		if err != nil {
			return nil, nil // no home: no default file
		}
		path = filepath.Join(dir, "siteserver", "admin.yaml")
	}
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) && !named {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("admin config: %w", err)
	}
	defer fh.Close()
	var c adminConfigFile
	if err := Decode(fh, &c); err != nil {
		return nil, fmt.Errorf("admin config %s: %w", path, err)
	}
	rel := func(p string) string {
		if p == "" {
			return ""
		}
		if rest, ok := strings.CutPrefix(p, "~/"); ok {
			if home, err := os.UserHomeDir(); err == nil {
				return filepath.Join(home, rest)
			}
		}
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(path), p)
	}
	return &connSource{from: path, url: c.NS, tokenFile: rel(c.TokenFile), ca: rel(c.CAFile), caSHA256: c.CASHA256}, nil
}

// client connects as the settings say.
func (f *adminFlags) client() (*nsapi.Client, error) {
	srcs, err := f.connSources()
	if err != nil {
		return nil, err
	}
	var u, tok, ca *connSource
	for i := range srcs {
		s := &srcs[i]
		if u == nil && s.url != "" {
			u = s
		}
		if tok == nil && (s.token != "" || s.tokenFile != "") {
			tok = s
		}
		if ca == nil && (s.ca != "" || s.caSHA256 != "") {
			ca = s
		}
	}
	if u == nil {
		return nil, usageError{"no NS URL: give -ns URL, -data DIR, SITESERVER_NS or ns: in the admin config file (see -h)"}
	}
	if tok == nil {
		return nil, usageError{"no token: give -token, -token-file, -data DIR, SITESERVER_TOKEN_FILE or token_file: in the admin config file (see -h)"}
	}
	token := tok.token
	if token == "" {
		b, err := os.ReadFile(tok.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("token file (from %s): %w", tok.from, err)
		}
		token = strings.TrimSpace(string(b))
	}
	parsed, err := url.Parse(u.url)
	if err != nil || parsed.Scheme != "https" {
		return nil, usageError{fmt.Sprintf("NS URL %q (from %s) is not an https URL", u.url, u.from)}
	}
	var caPEM []byte
	pin := ""
	if ca != nil {
		pin = ca.caSHA256
		if ca.ca != "" {
			if caPEM, err = os.ReadFile(ca.ca); err != nil {
				return nil, fmt.Errorf("CA file (from %s): %w", ca.from, err)
			}
		}
	}
	conf, err := pki.ClientTLSConfig(caPEM, pin, parsed.Hostname(), nil, nil)
	if err != nil {
		return nil, usageError{fmt.Sprintf("%v (give -ca or -ca-sha256)", err)}
	}
	c := nsapi.NewClient(u.url, conf)
	c.AdminToken = token
	return c, nil
}
