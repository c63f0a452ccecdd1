// Package configs is the YAML schema of smarthost: it reads a file, expands
// ${ENV} and *_file secrets, decodes strictly and reports every problem with
// its YAML path and line. It knows nothing about the packages that use it;
// cmd/smarthost translates a File into their own Config structs.
package configs

// File mirrors the configuration file section by section.
type File struct {
	Hostname  string     `yaml:"hostname"`
	Listeners []Listener `yaml:"listeners"`
	TLS       TLS        `yaml:"tls"`
	Auth      Auth       `yaml:"auth"`
	Policy    Policy     `yaml:"policy"`
	RateLimit RateLimit  `yaml:"ratelimit"`
	DKIM      DKIM       `yaml:"dkim"`
	Upstreams []Upstream `yaml:"upstreams"`
	Routes    []Route    `yaml:"routes"`
	Queue     Queue      `yaml:"queue"`
	Archive   []Archive  `yaml:"archive"`
	Headers   Headers    `yaml:"headers"`
	Metrics   Metrics    `yaml:"metrics"`
	Log       Log        `yaml:"log"`
	History   History    `yaml:"history"`
	Webhooks  []Webhook  `yaml:"webhooks"`

	// Path is the file this was read from ("" for embedded text).
	Path string `yaml:"-"`
	// lines maps a YAML path to the line it starts on, for Problems found
	// after decoding.
	lines map[string]int
	// values maps a YAML path to the position of its value node.
	values map[string][2]int
	// read reads the files the *_file keys name (os.ReadFile).
	read func(string) ([]byte, error)
}

type Listener struct {
	Address       string `yaml:"address"`
	Mode          string `yaml:"mode"`
	ProxyProtocol bool   `yaml:"proxy_protocol"`
}

type TLS struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	SelfSigned bool   `yaml:"self_signed"`
	MinVersion string `yaml:"min_version"`
	// SessionTicketKeyFile holds a secret that every node behind one load
	// balancer shares, so that a client resumes its TLS session on any of
	// them; empty: each process keeps its own keys.
	SessionTicketKeyFile string `yaml:"session_ticket_key_file"`
	// CBCCiphers also offers TLS 1.2's ECDHE CBC-SHA suites, for clients
	// too old for AES-GCM or ChaCha20-Poly1305; off, TLS 1.2 is AEAD only.
	CBCCiphers bool `yaml:"cbc_ciphers"`
}

type Auth struct {
	Backend           string `yaml:"backend"`
	AllowInsecureAuth bool   `yaml:"allow_insecure_auth"`
	Static            Static `yaml:"static"`
	LDAP              LDAP   `yaml:"ldap"`
}

type Static struct {
	UsersFile string   `yaml:"users_file"`
	CacheTTL  Duration `yaml:"cache_ttl"`
	// UsersText, when set by the program (the embedded quickstart), is
	// the users file's text, read instead of UsersFile.
	UsersText []byte `yaml:"-"`
}

type LDAP struct {
	// Preset "ad": Active Directory's defaults for user_filter and
	// address_attributes, and AD's ways without asking the server.
	Preset            string   `yaml:"preset"`
	URLs              []string `yaml:"urls"`
	StartTLS          *bool    `yaml:"start_tls"`
	TLSVerify         *bool    `yaml:"tls_verify"`
	CAFile            string   `yaml:"ca_file"`
	BindDN            string   `yaml:"bind_dn"`
	BindPassword      string   `yaml:"bind_password"`
	BindPasswordFile  string   `yaml:"bind_password_file"`
	BaseDN            string   `yaml:"base_dn"`
	UserFilter        string   `yaml:"user_filter"`
	AddressAttributes []string `yaml:"address_attributes"`
	ClassAttribute    string   `yaml:"class_attribute"`
	RequiredGroup     string   `yaml:"required_group"`
	// RecipientRulesAttribute names an attribute whose values are the
	// user's recipient rules: "allow:PATTERN" or "deny:PATTERN".
	RecipientRulesAttribute string   `yaml:"recipient_rules_attribute"`
	Timeout                 Duration `yaml:"timeout"`
	CacheTTL                Duration `yaml:"cache_ttl"`
}

type Policy struct {
	TrustedNetworks         []string `yaml:"trusted_networks"`
	TrustedSenders          []string `yaml:"trusted_senders"`
	ProxyNetworks           []string `yaml:"proxy_networks"`
	EnforceHeaderFrom       *bool    `yaml:"enforce_header_from"`
	MaxRecipients           int      `yaml:"max_recipients"`
	MaxMessageSize          Size     `yaml:"max_message_size"`
	AllowedRecipientDomains []string `yaml:"allowed_recipient_domains"`
	// BareNewline: a bare LF in message content is made CRLF
	// ("normalize", as Postfix 3.9+ does) or refused ("reject").
	BareNewline string `yaml:"bare_newline"`
	// LongLines: a message line over 998 bytes is folded as Postfix's
	// SMTP client folds it ("wrap") or, over 2,000, refused ("reject").
	LongLines string `yaml:"long_lines"`
	// Rewrite: the envelope sender (and From:) of matching messages
	// becomes another address, as Postfix's sender_canonical_maps do.
	Rewrite []Rewrite `yaml:"rewrite"`
	// Recipients: per class, the recipients its users may mail.
	Recipients map[string]RecipientRules `yaml:"recipients"`
}

// Match selects messages by the submitter and the envelope sender; every
// list given must match, and an empty Match matches everything.
type Match struct {
	Users         []string `yaml:"users"`
	Classes       []string `yaml:"classes"`
	SenderDomains []string `yaml:"sender_domains"`
}

type Rewrite struct {
	Match      Match  `yaml:"match"`
	Sender     string `yaml:"sender"`      // the new envelope sender
	HeaderFrom bool   `yaml:"header_from"` // From: and Sender: too
	ReplyTo    bool   `yaml:"reply_to"`    // Reply-To: addresses that were the sender too
}

// RecipientRules allow and deny recipients: addresses, "*@domain", or
// domains. Deny wins; with an allow list, nothing else is allowed.
type RecipientRules struct {
	Allow []string `yaml:"allow"`
	Deny  []string `yaml:"deny"`
}

// Archive copies matching messages to Address through Upstreams, as
// Postfix's always_bcc and sender_bcc_maps do.
type Archive struct {
	Match     Match    `yaml:"match"`
	Address   string   `yaml:"address"`
	Upstreams []string `yaml:"upstreams"`
}

type RateLimit struct {
	Backend          string           `yaml:"backend"`
	Redis            Redis            `yaml:"redis"`
	OnBackendError   string           `yaml:"on_backend_error"`
	Classes          map[string]Class `yaml:"classes"`
	AuthFailures     *Rate            `yaml:"auth_failures"`
	ConnectionsPerIP int              `yaml:"connections_per_ip"`
	MaxConnections   int              `yaml:"max_connections"`
	Timeout          Duration         `yaml:"timeout"`
}

type Redis struct {
	Addrs        []string `yaml:"addrs"`
	MasterName   string   `yaml:"master_name"`
	Username     string   `yaml:"username"`
	Password     string   `yaml:"password"`
	PasswordFile string   `yaml:"password_file"`
	DB           int      `yaml:"db"`
	TLS          bool     `yaml:"tls"`
}

type Class struct {
	Messages   *Rate `yaml:"messages"`
	Recipients *Rate `yaml:"recipients"`
	Bytes      *Rate `yaml:"bytes"`
	// RelayPeer: the class's users are other smarthost nodes handing over
	// their queue (smarthost drain): any envelope sender, no header
	// checks, not signed again.
	RelayPeer bool `yaml:"relay_peer"`
	// Priority (high, normal, bulk) orders the class's messages while
	// they wait for an upstream's limits.
	Priority string `yaml:"priority"`
}

type DKIM struct {
	Domains map[string][]DKIMKey `yaml:"domains"`
	// SignSubdomains names domains of Domains whose keys also sign mail
	// From: their subdomains, as OpenDKIM's SigningTable "*@*.example.com".
	SignSubdomains []string `yaml:"sign_subdomains"`
	Oversign       []string `yaml:"oversign"`
	OnMissingKey   string   `yaml:"on_missing_key"`
}

type DKIMKey struct {
	Selector        string `yaml:"selector"`
	KeyFile         string `yaml:"key_file"`
	CreateIfMissing bool   `yaml:"create_if_missing"`
	Algo            string `yaml:"algo"`
}

type Upstream struct {
	Name         string `yaml:"name"`
	URL          string `yaml:"url"`
	TLS          string `yaml:"tls"`
	TLSVerify    *bool  `yaml:"tls_verify"`
	CAFile       string `yaml:"ca_file"`
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// AuthMechanism: auto (the best one offered that we have credentials
	// for), plain, login, xoauth2 or oauthbearer.
	AuthMechanism  string   `yaml:"auth_mechanism"`
	OAuth2         *OAuth2  `yaml:"oauth2"`
	ClientCertFile string   `yaml:"client_cert_file"`
	ClientKeyFile  string   `yaml:"client_key_file"`
	MaxConnections int      `yaml:"max_connections"`
	Timeout        Duration `yaml:"timeout"`
	// ConnectTimeout bounds the name lookup and TCP connect alone, much
	// shorter than Timeout (Postfix's smtp_connect_timeout is 30s).
	ConnectTimeout Duration `yaml:"connect_timeout"`
	Weight         int      `yaml:"weight"`
	// DisableExtensions are EHLO keywords to act as if the upstream did
	// not offer, for one whose support is broken (Postfix's
	// smtp_discard_ehlo_keywords).
	DisableExtensions []string `yaml:"disable_extensions"`
	// Limits are what the upstream takes, from every node together
	// (through ratelimit.backend); what is over them waits in the queue.
	Limits UpstreamLimits `yaml:"limits"`
	// Throttle is how the upstream says "too much" and how long the
	// route then holds.
	Throttle Throttle `yaml:"throttle"`
}

// UpstreamLimits are an upstream login's limits: messages and recipients
// per window ("30/m", "10000/d"), sessions open at once.
type UpstreamLimits struct {
	Messages    *Rate `yaml:"messages"`
	Recipients  *Rate `yaml:"recipients"`
	Connections int   `yaml:"connections"`
}

// Throttle: the replies that put an upstream's route on hold, and the
// hold's cool-down, which doubles while they go on.
type Throttle struct {
	// Replies are recognised besides the built-in ones (Microsoft 365,
	// Google, the generic 421 / 4.7.0 "too many") unless DefaultReplies
	// is false.
	Replies        []ThrottleReply `yaml:"replies"`
	DefaultReplies *bool           `yaml:"default_replies"`
	Cooldown       Duration        `yaml:"cooldown"`
	MaxCooldown    Duration        `yaml:"max_cooldown"`
}

// ThrottleReply matches a reply by every field given: its code, its
// enhanced code ("4.7.0", or a range "5.2.251-255") and a regular
// expression on its text (case-insensitive).
type ThrottleReply struct {
	Code     int    `yaml:"code"`
	Enhanced string `yaml:"enhanced"`
	Text     string `yaml:"text"`
}

// OAuth2 is where an upstream's bearer tokens come from: the client
// credentials grant (TokenURL, ClientID, ClientSecret, Scopes), or a file
// something else keeps fresh (TokenFile).
type OAuth2 struct {
	TokenURL         string   `yaml:"token_url"`
	ClientID         string   `yaml:"client_id"`
	ClientSecret     string   `yaml:"client_secret"`
	ClientSecretFile string   `yaml:"client_secret_file"`
	Scopes           []string `yaml:"scopes"`
	TokenFile        string   `yaml:"token_file"`
}

type Route struct {
	Match     RouteMatch `yaml:"match"`
	Upstreams []string   `yaml:"upstreams"`
	// Priority (high, normal, bulk), when set, is that of the route's
	// messages whatever their class's.
	Priority string `yaml:"priority"`
}

type RouteMatch struct {
	RecipientDomains []string `yaml:"recipient_domains"`
	SenderDomains    []string `yaml:"sender_domains"`
	Classes          []string `yaml:"classes"`
}

type Queue struct {
	Dir     string     `yaml:"dir"`
	Workers int        `yaml:"workers"`
	Retry   []Duration `yaml:"retry"`
	MaxAge  Duration   `yaml:"max_age"`
	// DelayWarning: one "still trying" notice to the sender after this long
	// (0: none).
	DelayWarning Duration `yaml:"delay_warning"`
	Handoff      Handoff  `yaml:"handoff"`
}

// Handoff names the peers a leaving node hands its queue to (smarthost
// drain, smarthost queue handoff): entries of upstreams, tried in order.
type Handoff struct {
	Upstreams []string `yaml:"upstreams"`
}

// Headers is what the relay does to message header fields.
type Headers struct {
	// Received: "full" names the client (EHLO name and address) in our
	// Received: field; "anonymous" leaves both out.
	Received string `yaml:"received"`
	// Remove drops fields, Replace rewrites their values, before signing
	// (Postfix's header_checks IGNORE and REPLACE).
	Remove  []HeaderRule    `yaml:"remove"`
	Replace []HeaderReplace `yaml:"replace"`
}

// HeaderRule selects the fields named Name (any case) whose unfolded value
// matches the regular expression Matching (every one, without it).
type HeaderRule struct {
	Name     string `yaml:"name"`
	Matching string `yaml:"matching"`
}

// HeaderReplace gives the fields it selects the value With: the whole value
// without Matching, else what Matching matched ($1 and the like refer to
// its groups).
type HeaderReplace struct {
	Name     string `yaml:"name"`
	Matching string `yaml:"matching"`
	With     string `yaml:"with"`
}

type Metrics struct {
	Listen string `yaml:"listen"`
	// PProf serves /debug/pprof/ (off by default).
	PProf bool `yaml:"pprof"`
	// TokenFile holds the bearer token that /v1/ (limits, drain) and
	// /debug/pprof/ need when Listen is not a loopback address.
	TokenFile string `yaml:"token_file"`
}

type Log struct {
	Format string `yaml:"format"`
	Level  string `yaml:"level"`
}

// History is the delivery history: every event of every message, on disk
// for MaxAge or up to MaxSize, whichever comes first, after the message
// has left the queue too (smarthost trace, /v1/messages, /status).
type History struct {
	Enabled *bool    `yaml:"enabled"` // nil: on
	Dir     string   `yaml:"dir"`     // default: queue.dir's history/
	MaxAge  Duration `yaml:"max_age"`
	MaxSize Size     `yaml:"max_size"`
}

// On reports whether the history is kept.
func (h History) On() bool { return h.Enabled == nil || *h.Enabled }

// Webhook is an application's URL that hears what became of its messages.
type Webhook struct {
	URL        string       `yaml:"url"`
	Events     []string     `yaml:"events"` // delivered, deferred, bounced, delayed; none: all
	Secret     string       `yaml:"secret"` // the HMAC-SHA256 key of the signature
	SecretFile string       `yaml:"secret_file"`
	Match      WebhookMatch `yaml:"match"`
	// MaxQueued bounds the events waiting for the receiver; beyond it the
	// oldest are dropped (and counted).
	MaxQueued int `yaml:"max_queued"`
}

// WebhookMatch limits a webhook to the messages of these users, or of
// users of these rate-limit classes; empty lists match every message.
type WebhookMatch struct {
	Users   []string `yaml:"users"`
	Classes []string `yaml:"classes"`
}
